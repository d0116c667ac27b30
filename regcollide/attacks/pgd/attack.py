"""Projected gradient descent (PGD), the first-order adversary of Madry et al.

Reference: A. Madry, A. Makelov, L. Schmidt, D. Tsipras, A. Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018.

PGD ease (ε*, the success curve and the sanity flags) is built on this attack in
`regcollide.attacks.pgd.ease`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from regcollide._modes import eval_mode

NORMS = ("linf", "l2")


@dataclass
class PGDOutput:
    """What one PGD call returns (all on the device of the images)."""

    adv: Tensor  # (N, C, H, W) adversarial examples, inside the ε-ball and [0, 1]
    success: Tensor  # (N,) bool, the returned example fools the model
    first_success_step: Tensor  # (N,) int64, gradient steps before the first fooling iterate; 0 clean; -1 never


class PGD:
    r"""PGD with L∞ or L2 budget, random start, restarts, untargeted or targeted (Madry et al., ICLR 2018).

    Threat model: white-box, ‖x_adv − x‖ ≤ ε in the chosen norm, x_adv ∈ [0, 1]. Each step ascends the
    mean cross-entropy (descends it towards the target when targeted) with a signed (L∞) or L2-normalized
    gradient of size α, then projects onto the ε-ball and clips to [0, 1], in the same order as
    torchattacks' `PGD` / `PGDL2` (step, project, clip).

    Early stopping (``early_stop=True``, default): a sample counts as broken if the clean input or *any*
    iterate (random start point included, any restart) fools the model; that point is returned and it leaves
    the active batch, so it stops costing compute. With ``early_stop=False`` every sample runs all steps
    and success means the *last* iterate fools the model, exactly torchattacks' semantics (a sample can be
    fooled mid-way and recover). Per sample the trajectories are identical in both modes up to the first
    success, so the early-stop success set is a superset of the last-iterate one.

    Args:
        model: maps images in [0, 1] to logits (B, K).
        eps: budget ε in pixel units. (Default: 0.1)
        alpha: step size; default 2.5·ε/steps (the rule of thumb from Madry et al.'s robustness library).
        steps: gradient steps per restart. (Default: 40)
        norm: "linf" or "l2". (Default: "linf")
        random_start: start uniformly in the L∞ ball, or for L2 at a random direction with radius
            U(0, 1)·ε (torchattacks' convention). (Default: True)
        restarts: random restarts; later restarts only run on samples not yet broken. (Default: 1)
        targeted: push the prediction to ``target_labels`` instead of away from ``labels``.
        batch_size: samples per chunk; bounds memory. (Default: 256)
        seed: seeds the random start (a private generator; the global RNG is untouched). (Default: 0)
        early_stop: see above. (Default: True)
        progress: show a tqdm bar over chunks. (Default: False)

    Shape:
        images (N, C, H, W) in [0, 1]; labels (N,) int64; target_labels (N,) int64 or None.
        ``eps`` passed to the call overrides the budget, as a float or a per-sample (N,) tensor; the step
        size then scales with it (α/ε is kept fixed).

    Example::

        >>> attack = PGD(model, eps=0.1, steps=40, norm="linf")
        >>> out = attack(images, labels)
        >>> robust_acc = 1 - out.success.float().mean()   # on correctly classified inputs
    """

    def __init__(self, model: nn.Module, eps: float = 0.1, alpha: float | None = None, steps: int = 40,
                 norm: str = "linf", random_start: bool = True, restarts: int = 1, targeted: bool = False,
                 batch_size: int = 256, seed: int = 0, early_stop: bool = True, progress: bool = False):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if steps < 1 or restarts < 1 or batch_size < 1:
            raise ValueError("steps, restarts and batch_size must be >= 1")
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 repeat the same deterministic run; set random_start=True")
        self.model, self.eps, self.steps, self.norm = model, float(eps), int(steps), norm
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / self.steps
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.random_start, self.restarts, self.targeted = random_start, int(restarts), targeted
        self.batch_size, self.seed, self.early_stop, self.progress = int(batch_size), seed, early_stop, progress

    def __call__(self, images: Tensor, labels: Tensor, target_labels: Tensor | None = None,
                 eps: float | Tensor | None = None) -> PGDOutput:
        _check_inputs(images, labels)
        if self.targeted != (target_labels is not None):
            raise ValueError("pass target_labels exactly when targeted=True")
        n = images.shape[0]
        eps_all = self.eps if eps is None else eps
        _check_eps(eps_all, n)
        if target_labels is not None:
            _check_targets(target_labels, labels)
        adv = images.detach().clone()
        success = torch.zeros(n, dtype=torch.bool, device=images.device)
        first = torch.full((n,), -1, dtype=torch.long, device=images.device)
        gen = torch.Generator(device=images.device).manual_seed(self.seed)
        with eval_mode(self.model):
            chunks = range(0, n, self.batch_size)
            if self.progress:
                chunks = tqdm(chunks, desc=f"PGD-{self.steps} {self.norm}", unit="batch")
            for start in chunks:
                stop = min(start + self.batch_size, n)
                ids = torch.arange(start, stop, device=images.device)
                x = images[start:stop]  # (B, C, H, W) a view: no copy of the chunk
                eps_b = eps_all[start:stop].to(images.dtype).view(-1, 1, 1, 1) if isinstance(eps_all, Tensor) \
                    else float(eps_all)
                tgt = target_labels[start:stop] if self.targeted else labels[start:stop]
                if self.random_start and self.early_stop:  # a fooling clean input is broken at step 0
                    with torch.no_grad():
                        pred = self.model(x).argmax(1)
                    done = ids[pred == tgt if self.targeted else pred != tgt]
                    success[done], first[done] = True, 0
                for r in range(self.restarts):
                    # Noise is drawn for the whole chunk, so a sample's start point does not depend on
                    # which other samples were already broken.
                    noise = self._unit_noise(x, gen) if self.random_start else None
                    todo = ~success[start:stop]
                    if bool(todo.all()):  # nothing broken yet: the chunk as it is, no masked copies
                        self._run(x, ids, tgt, eps_b, noise, r, adv, success, first)
                    elif todo.any():
                        self._run(x[todo], ids[todo], tgt[todo], _take(eps_b, todo),
                                  None if noise is None else noise[todo], r, adv, success, first)
        return PGDOutput(adv=adv, success=success, first_success_step=first)

    def _run(self, x, ids, tgt, eps, noise, restart, adv_out, success, first) -> None:
        """One restart on the clean inputs ``x`` (B, C, H, W) of samples ``ids``; writes the output tensors."""
        alpha = eps * (self.alpha / self.eps)  # float or (B, 1, 1, 1)
        # clamp(x + ε·noise, 0, 1), in place on the noise drawn for this run (the same values)
        adv = x.clone() if noise is None else noise.mul_(eps).add_(x).clamp_(min=0, max=1)
        box = self._box(x, eps)  # L∞: the ε-ball ∩ [0, 1] as per-pixel bounds, computed once
        if not self.early_stop:
            self._run_all_steps(adv, x, ids, tgt, eps, alpha, box, restart, adv_out, success, first)
            return
        for t in range(self.steps + 1):
            last, step_count = t == self.steps, restart * self.steps + t
            adv.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = self.model(adv)  # (B, K); the last forward only checks the final iterate
            pred = logits.detach().argmax(1)
            fooled = pred == tgt if self.targeted else pred != tgt  # (B,)
            drop = bool(fooled.any())
            if drop:  # broken now: record this iterate, then drop it so it stops costing compute
                adv_out[ids[fooled]] = adv.detach()[fooled]
                success[ids[fooled]], first[ids[fooled]] = True, step_count
            if last:
                break
            keep = ~fooled
            if drop and not keep.any():
                return
            loss = F.cross_entropy(logits[keep] if drop else logits, tgt[keep] if drop else tgt)
            grad = torch.autograd.grad(-loss if self.targeted else loss, adv)[0]
            if drop:
                adv, x, grad, ids, tgt = adv[keep], x[keep], grad[keep], ids[keep], tgt[keep]
                eps, alpha = _take(eps, keep), _take(alpha, keep)
                box = None if box is None else (box[0][keep], box[1][keep])
            adv = self._step(adv.detach(), x, grad, eps, alpha, box)
        adv_out.index_copy_(0, ids, adv.detach())  # the unbroken samples' last iterate

    def _run_all_steps(self, adv, x, ids, tgt, eps, alpha, box, restart, adv_out, success, first) -> None:
        """Without early stop every sample takes every step. The predictions of the steps + 1 iterates go
        into one (steps + 1, B) buffer and are compared with the labels once, after the last forward, so a
        step costs no more than torchattacks' does besides that argmax."""
        preds = torch.empty((self.steps + 1, len(ids)), dtype=torch.long, device=x.device)
        for t in range(self.steps):
            adv.requires_grad_(True)
            logits = self.model(adv)  # (B, K)
            torch.argmax(logits.detach(), 1, out=preds[t])
            loss = F.cross_entropy(logits, tgt)
            grad = torch.autograd.grad(-loss if self.targeted else loss, adv)[0]
            adv = self._step(adv.detach(), x, grad, eps, alpha, box)
        with torch.no_grad():
            torch.argmax(self.model(adv), 1, out=preds[-1])  # the last forward only checks the final iterate
        hits = preds == tgt if self.targeted else preds != tgt  # (steps + 1, B) which iterates fool the model
        fooled = hits[-1]
        adv_out.index_copy_(0, ids, adv)
        success[ids[fooled]] = True
        # the first fooling step; fooled mid-way but recovered is not a success in this mode
        first_seen = hits.to(torch.uint8).argmax(0) + restart * self.steps  # (B,) first True
        first[ids] = torch.where(fooled, first_seen, -1)

    def _box(self, x: Tensor, eps) -> tuple[Tensor, Tensor] | None:
        """L∞ only: (max(x − ε, 0), min(x + ε, 1)), the set the projection and the clip keep adv in."""
        if self.norm != "linf":
            return None
        return (x - eps).clamp_(min=0), (x + eps).clamp_(max=1)

    def _step(self, adv: Tensor, x: Tensor, grad: Tensor, eps, alpha, box) -> Tensor:
        """Ascent step, projection onto the ε-ball, clip to [0, 1] (torchattacks' order).

        For L∞ the projection and the clip are one clamp to the precomputed box: the same set as
        torchattacks' clamp(adv − x, −ε, ε) + x then clamp(0, 1), in three passes over the batch instead
        of six (equal up to the rounding of (adv − x) + x, one ulp).
        """
        if self.norm == "linf":
            step = grad.sign_()  # in place on autograd's fresh buffer
            adv = adv.add_(step, alpha=alpha) if isinstance(alpha, float) else adv.addcmul_(step, alpha)
            return adv.clamp_(min=box[0], max=box[1])
        b = adv.shape[0]
        grad = grad / (grad.reshape(b, -1).norm(p=2, dim=1) + 1e-10).view(b, 1, 1, 1)
        delta = (adv + alpha * grad) - x
        norms = delta.reshape(b, -1).norm(p=2, dim=1).view(b, 1, 1, 1)
        delta = delta * torch.clamp(eps / norms, max=1.0)
        return torch.clamp(x + delta, min=0, max=1)

    def _unit_noise(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Start offsets for ε = 1 (scaled by each sample's ε later). (B, C, H, W)"""
        if self.norm == "linf":
            return torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
        b = x.shape[0]
        d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        r = torch.rand((b, 1, 1, 1), generator=gen, device=x.device, dtype=x.dtype)
        return d / d.reshape(b, -1).norm(p=2, dim=1).view(b, 1, 1, 1) * r


def _take(value, mask: Tensor):
    """Select rows of a per-sample tensor; pass python floats through."""
    return value[mask] if isinstance(value, Tensor) else value


def _check_eps(eps: float | Tensor, n: int) -> None:
    """A budget is a finite number > 0, or one per sample of shape (n,): NaN, inf and ≤ 0 are refused."""
    if isinstance(eps, Tensor):
        if eps.shape != (n,):
            raise ValueError(f"a per-sample eps must have shape ({n},), got {tuple(eps.shape)}")
        if not bool((torch.isfinite(eps) & (eps > 0)).all()):
            raise ValueError("every per-sample eps must be a finite number > 0 (got NaN, inf or <= 0)")
    elif not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")


def _check_targets(target_labels: Tensor, labels: Tensor) -> None:
    """Target labels: one non-negative integer class per image."""
    if target_labels.shape != labels.shape or target_labels.is_floating_point() or target_labels.is_complex():
        raise ValueError(f"target_labels must be integer class indices of shape {tuple(labels.shape)}, got "
                         f"{tuple(target_labels.shape)} {target_labels.dtype}")
    if target_labels.numel() and int(target_labels.min()) < 0:
        raise ValueError("target_labels must be class indices >= 0")


def _check_inputs(images: Tensor, labels: Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be in [0, 1]; put any normalization inside the model")

