"""The Null-space search: exact feature collisions from the kernel of the first weight layer, verified.

Reference: U. Ozbulak, M. Gasparyan, S. Rao, W. De Neve, A. Van Messem, "Exact Feature Collisions in Neural
Networks", arXiv 2205.15763 (2022), Definition 4 and Section 4.2.

If W1 is the first weight matrix the input meets and φ ∈ ker(W1), then x̂ = x + β·φ gives W1·x̂ = W1·x, so
every later layer, and the output, is unchanged: a *collision*. The theorem holds exactly for a Linear first
layer and a patchify conv (ViT/DeiT stems); other convolutions are checked for an exact kernel among
stride-periodic patterns and otherwise get the best approximate direction, reported as ``exact: false``
(see :mod:`regcollide.attacks.nullspace.basis`). Every example carries its *measured* residuals.

Example::

    >>> search = NullspaceSearch(model, beta=1.0, mode="repeat", collisions=2)
    >>> out = search(images)                  # images (N, C, H, W) in [0, 1]
    >>> out.images.shape                      # (2N, C, H, W), sample-major
    >>> result = evaluate_nullspace(model, images, n=16)
    >>> result.to_dict()["max_rel_output_residual"]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from regcollide._modes import eval_mode
from regcollide.attacks.checks import Flag, check_batch
from regcollide.attacks.nullspace.basis import KernelPlan, NullspaceError, build_plan
from regcollide.attacks.nullspace.outputs import call_model, compare, first_call_hook, is_detection_model, split_output
from regcollide.attacks.nullspace.perturb import MODES, default_mask, make_perturbations, masked_basis, project_into_box

__all__ = ["MODES", "NullspaceError", "NullspaceOutput", "NullspaceResult", "NullspaceSearch",
           "evaluate_nullspace"]

# a float32 collision is "at rounding level" below this; the exactness target in docs/design.md
EXACT_TOLERANCE = 1e-5
# Two images closer than one 8-bit grey level (1/255) in L2 are the same picture once saved; float32
# round-off differences (~1e-10) are far below it. Collisions that moved less do not count as found.
MIN_DISTANCE = 1 / 255
NOT_EXACT = "not_exact"
STRUCTURE_MISMATCH = "output_structure_mismatch"


@dataclass
class NullspaceOutput:
    """Colliding images and what was measured on them; index i·K + j is collision j of image i."""

    images: Tensor  # (N·K, C, H, W) colliding images x̂
    perturbations: Tensor  # (N·K, C, H, W) x̂ − x as stored (after float32 rounding)
    source: Tensor  # (N·K,) index of the original image
    abs_output_residual: Tensor  # (N·K,) max |g(x̂) − g(x)|
    rel_output_residual: Tensor  # (N·K,) max |g(x̂) − g(x)| / max |g(x)|
    rel_first_layer_residual: Tensor  # (N·K,) the same for W1's output (bias included)
    first_layer_ratio: Tensor  # (N·K,) ‖W1 out(x̂) − W1 out(x)‖₂ / ‖x̂ − x‖₂ (≈ ‖Aδ‖/‖δ‖)
    agreement: Tensor  # (N·K,) prediction agreement in [0, 1]
    mismatched: list[list[str]]  # per collision: output leaves whose shapes differ (detection counts)
    plan: KernelPlan
    exact: bool
    reason: str
    reference_outputs: list[dict] = field(default_factory=list)  # first few samples, for pictures
    colliding_outputs: list[dict] = field(default_factory=list)


class NullspaceSearch:
    r"""Null-space search (Ozbulak et al., 2022): x̂ = x + β·P with P built from ker(W1).

    Threat model: none; this is a *collision* evaluator. It shows which input changes the network cannot
    see at all. Arguments:
        model: images in [0, 1] -> logits, a segmentation dict or detection list (any task).
        beta: size β of each unit kernel vector per patch (‖δ‖₂ = β for a Linear first layer). (Default: 1.0)
        mode: "repeat" (one φ on every patch), "per_patch" (a different basis vector per patch), "random"
            (random combinations), "masked" (β_i = β only on patches inside ``mask``). (Default: "repeat")
        collisions: distinct colliding images per input, K. (Default: 1)
        valid_image: keep x̂ in [0, 1] by projecting onto kernel ∩ box and shrinking β_i, never clipping.
        mask: (H, W) bool region for mode "masked" (default: a centred square over about half the image).
        seed: seeds basis choice and random combinations. batch_size: originals per forward chunk.
    Shape: images (N, C, H, W) -> :class:`NullspaceOutput` with (N·K, C, H, W) images.
    """

    def __init__(self, model: nn.Module, beta: float = 1.0, mode: str = "repeat", collisions: int = 1,
                 valid_image: bool = False, mask: Tensor | None = None, seed: int = 0, batch_size: int = 16,
                 progress: bool = False):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
        if not (math.isfinite(beta) and beta > 0) or collisions < 1 or batch_size < 1:
            raise ValueError(f"beta must be finite and > 0 (got {beta}), collisions and batch_size >= 1.")
        self.model, self.beta, self.mode, self.collisions = model, float(beta), mode, int(collisions)
        self.valid_image, self.mask, self.seed = valid_image, mask, seed
        self.batch_size, self.progress = batch_size, progress

    def plan(self, input_shape: tuple[int, int, int]) -> KernelPlan:
        return build_plan(self.model, input_shape, approx_vectors=self.collisions, seed=self.seed)

    def perturbations(self, centres: Tensor, low: Tensor | None = None, high: Tensor | None = None
                      ) -> tuple[Tensor, KernelPlan, str | None]:
        """(N·K, C, H, W) float64 kernel perturbations around ``centres``; with a box, centre + δ fits it."""
        plan = self.plan(tuple(centres.shape[1:]))
        generator = torch.Generator().manual_seed(self.seed)
        delta, note = make_perturbations(plan, centres.shape[0], self.mode, self.collisions, self.beta,
                                         self.mask, generator)
        if low is not None:
            k = self.collisions
            basis = plan.basis
            rep = lambda t: t.double().repeat_interleave(k, dim=0)  # noqa: E731  (N, ...) -> (N·K, ...)
            centre, low, high = rep(centres), rep(low), rep(high)
            if self.mode == "masked" and plan.kind == "linear" and plan.patches == 1:
                mask = default_mask(plan) if self.mask is None else self.mask.bool().cpu()
                basis = masked_basis(plan, mask)
                inside = mask.to(centre.device)
                low, high = torch.where(inside, low, centre), torch.where(inside, high, centre)
            delta = project_into_box(plan, basis, centre, delta, low, high, self.progress)
        return delta, plan, note

    @torch.no_grad()
    def __call__(self, images: Tensor) -> NullspaceOutput:
        return self.search(images)

    @torch.no_grad()
    def search(self, images: Tensor) -> NullspaceOutput:
        with eval_mode(self.model):
            box = (torch.zeros_like(images), torch.ones_like(images)) if self.valid_image else (None, None)
            delta, plan, note = self.perturbations(images, *box)
            colliding = (images.double().repeat_interleave(self.collisions, 0) + delta).to(images.dtype)
            measured = measure(self.model, plan.layer_name, images, colliding, self.collisions, self.batch_size,
                               self.progress)
        exact, reason = exactness(plan, note, measured["rel_output_residual"],
                                  measured["rel_first_layer_residual"], measured["mismatched"])
        return NullspaceOutput(images=colliding, perturbations=colliding - images.repeat_interleave(
            self.collisions, 0), source=torch.arange(len(images)).repeat_interleave(self.collisions),
            plan=plan, exact=exact, reason=reason, **measured)


def exactness(plan: KernelPlan, note: str | None, rel_residual: Tensor, rel_first_layer: Tensor,
              mismatched: list[list[str]] | None = None) -> tuple[bool, str]:
    """The verdict: the structure must be exact *and* every measured residual at float rounding level.

    Three measurements must agree: the relative output residual, the relative residual of W1's own output
    (a small output residual alone can hide a first layer that moved by most of its range, when later
    layers happen to absorb the change), and the output structure (a different number of detections is a
    changed output, whatever the residual of the leaves that still line up).
    """
    if not plan.exact:
        return False, plan.reason
    if note is not None:
        return False, f"{plan.reason}; but {note}"
    changed = sum(bool(m) for m in mismatched or [])
    if changed:
        return False, f"{plan.reason}; but {changed} collision(s) change the output structure " \
                      "(e.g. the number of detections)"
    for what, values in (("output", rel_residual), ("first-layer", rel_first_layer)):
        worst = float(values.max()) if values.numel() else 0.0
        if not worst <= EXACT_TOLERANCE:  # NaN counts as a failure too
            return False, f"{plan.reason}; but the measured relative {what} residual {worst:.2e} exceeds " \
                          f"{EXACT_TOLERANCE:g}"
    return True, plan.reason


def forward_with_first_layer(model: nn.Module, layer_name: str, images: Tensor, detection: bool):
    """(model output, W1 output) for one batch."""
    store: dict = {}
    with first_call_hook(model.get_submodule(layer_name), store):
        output = call_model(model, images, detection)
    return output, store["output"]


def measure(model: nn.Module, layer_name: str, images: Tensor, others: Tensor, k: int, batch_size: int,
            progress: bool = False, keep: int = 4) -> dict:
    """Compare g(x_i) with g(x̂_{i,j}) for every collision j, in chunks; per-collision tensors."""
    detection = is_detection_model(model)
    rows: dict[str, list] = {"abs_output_residual": [], "rel_output_residual": [], "rel_first_layer_residual": [],
                             "first_layer_ratio": [], "agreement": [], "mismatched": []}
    kept_ref, kept_other = [], []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="nullspace", leave=False):
        x = images[start:start + batch_size]
        x_hat = others[start * k:(start + len(x)) * k]
        out_x, first_x = forward_with_first_layer(model, layer_name, x, detection)
        out_hat, first_hat = forward_with_first_layer(model, layer_name, x_hat, detection)
        ref, hat = split_output(out_x, len(x)), split_output(out_hat, len(x_hat))
        first_x = first_x.double().repeat_interleave(k, 0).flatten(1)
        first_diff = first_hat.double().flatten(1) - first_x
        rows["rel_first_layer_residual"].append(first_diff.abs().amax(1) / first_x.abs().amax(1).clamp_min(1e-300))
        step = (x_hat.double() - x.double().repeat_interleave(k, 0)).flatten(1).norm(dim=1)
        rows["first_layer_ratio"].append(first_diff.norm(dim=1) / step.clamp_min(1e-300))
        for j, sample in enumerate(hat):
            c = compare(ref[j // k], sample)
            rows["abs_output_residual"].append(torch.tensor([c.max_abs]))
            rows["rel_output_residual"].append(torch.tensor([c.rel]))
            rows["agreement"].append(torch.tensor([c.agreement]))
            rows["mismatched"].append(c.mismatched)
        if len(kept_ref) < keep:
            take = min(keep - len(kept_ref), len(x))
            kept_ref += [{key: v.cpu() for key, v in s.items()} for s in ref[:take]]
            kept_other += [{key: v.cpu() for key, v in s.items()} for s in hat[:take * k]]
    out = {key: torch.cat([v.cpu().double() for v in value]) if key != "mismatched" else value
           for key, value in rows.items()}
    out["reference_outputs"], out["colliding_outputs"] = kept_ref, kept_other
    return out


@dataclass
class NullspaceResult:
    """The nullspace JSON contract of docs/design.md plus extras (noise baseline, approximate ratio, verdict reason)."""

    model: str
    first_layer: str
    nullity: int
    exact: bool
    n: int
    beta: float
    linf_mean: float
    l2_mean: float
    max_abs_output_residual: float
    max_rel_output_residual: float
    max_rel_first_layer_residual: float
    prediction_agreement: float
    noise_max_rel_output_residual: float  # same-L2-norm Gaussian noise, unclipped
    noise_min_rel_output_residual: float
    noise_ratio: float  # min noise residual / max collision residual (conservative)
    approx_ratio: float  # max measured ‖Aδ‖/‖δ‖ of W1 (bias cancels); ≈ 0 for exact cases
    approx_ratio_relative: float | None  # approx_ratio / σ_max(A) for approximate plans
    mode: str
    collisions: int
    valid_image: bool
    reason: str
    kind: str  # linear | patchify | periodic | approximate
    patch_dim: int
    kernel_dim: int  # vectors in the basis actually used (approximate: singular vectors)
    normalization_folded: bool
    structure_mismatches: int  # collisions whose output structure differs (e.g. number of detections)
    min_pixel: float
    max_pixel: float
    valid_count: int  # collisions in [0, 1], exact (residuals ≤ EXACT_TOLERANCE, same prediction), moved ≥ 1/255
    valid_found: bool  # valid_count > 0: valid colliding images exist for these inputs
    relative_distance: float | None  # l2_mean / median pairwise L2 distance of the input images (None if N < 2)
    median_image_distance: float | None
    flags: list[Flag] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def model_name(model: nn.Module) -> str:
    inner = getattr(model, "net", model)
    return type(inner).__name__


@torch.no_grad()
def evaluate_nullspace(model: nn.Module, images: Tensor, labels: Tensor | None = None, n: int | None = None,
                       beta: float = 1.0, mode: str = "repeat", collisions: int = 1, valid_image: bool = False,
                       seed: int = 0, mask: Tensor | None = None, name: str | None = None,
                       batch_size: int = 16, progress: bool = False,
                       return_output: bool = False) -> NullspaceResult | tuple[NullspaceResult, NullspaceOutput]:
    """Run the search on the first ``n`` images and measure it against a same-norm noise baseline.

    ``labels`` are accepted for the common evaluator signature; collisions are judged against the model's
    own predictions on x, so labels are not needed. With ``valid_image=True`` the colliding images stay in
    [0, 1]; ``valid_found`` says whether any valid, exact collision that moved by at least one grey level
    was found, and ``relative_distance`` how far the collisions moved against the median distance between
    two of the input images (a collision at relative distance ≈ 1 is as different as another test image).
    Raises :class:`NullspaceError` (a ValueError) for models outside the method's scope, e.g. a first
    layer of nullity 0.
    """
    check_batch(images, labels)  # finite, in [0, 1]: the evaluator contract
    del labels
    images = images[:n] if n is not None else images
    search = NullspaceSearch(model, beta=beta, mode=mode, collisions=collisions, valid_image=valid_image,
                             mask=mask, seed=seed, batch_size=batch_size, progress=progress)
    out = search(images)
    noise_rel = noise_baseline(model, images, out, collisions, seed, batch_size)
    step = out.perturbations.double().flatten(1).norm(dim=1)  # (N·K,)
    worst = float(out.rel_output_residual.max())
    ratio = float(out.first_layer_ratio.max())
    plan = out.plan
    flags = [Flag(NOT_EXACT, out.reason)] if not out.exact else []
    if any(out.mismatched):
        flags.append(Flag(STRUCTURE_MISMATCH, "some collisions change the output structure (e.g. the number "
                                              "of detections): they are not collisions", "error"))
    median = median_pairwise_distance(images)
    valid = valid_collisions(out, step)
    result = NullspaceResult(
        model=name or model_name(model), first_layer=plan.layer_name, nullity=plan.nullity, exact=out.exact,
        n=len(images), beta=beta, linf_mean=float(out.perturbations.flatten(1).abs().amax(1).mean()),
        l2_mean=float(step.mean()), max_abs_output_residual=float(out.abs_output_residual.max()),
        max_rel_output_residual=worst, max_rel_first_layer_residual=float(out.rel_first_layer_residual.max()),
        prediction_agreement=float(out.agreement.mean()), noise_max_rel_output_residual=float(noise_rel.max()),
        noise_min_rel_output_residual=float(noise_rel.min()),
        noise_ratio=float(noise_rel.min()) / max(worst, 1e-30), approx_ratio=ratio,
        approx_ratio_relative=ratio / plan.sigma_max if plan.kind == "approximate" else None,
        mode=mode, collisions=collisions, valid_image=valid_image, reason=out.reason, kind=plan.kind,
        patch_dim=plan.patch_dim, kernel_dim=int(plan.basis.shape[0]),
        normalization_folded=plan.normalization_folded, structure_mismatches=sum(bool(m) for m in out.mismatched),
        min_pixel=float(out.images.min()), max_pixel=float(out.images.max()), valid_count=valid,
        valid_found=valid > 0, relative_distance=None if median is None else float(step.mean()) / median,
        median_image_distance=median, flags=flags)
    return (result, out) if return_output else result


def noise_baseline(model: nn.Module, images: Tensor, out: NullspaceOutput, collisions: int, seed: int,
                   batch_size: int) -> Tensor:
    """Relative output residuals (N·K,) of Gaussian noise with each collision's L2 norm, unclipped."""
    generator = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(out.perturbations.shape, generator=generator, dtype=torch.float64)
    step = out.perturbations.double().flatten(1).norm(dim=1)
    noise = noise * (step / noise.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    noisy = (images.double().repeat_interleave(collisions, 0) + noise.to(images.device)).to(images.dtype)
    with eval_mode(model):
        return measure(model, out.plan.layer_name, images, noisy, collisions, batch_size, keep=0)[
            "rel_output_residual"]


def valid_collisions(out: NullspaceOutput, step: Tensor) -> int:
    """Collisions that are valid images in [0, 1], exact at float rounding level and moved ≥ MIN_DISTANCE."""
    if not out.exact:
        return 0
    flat = out.images.flatten(1)
    inside = (flat.amin(1) >= 0) & (flat.amax(1) <= 1)  # (N·K,)
    collide = ((out.rel_output_residual <= EXACT_TOLERANCE) & (out.rel_first_layer_residual <= EXACT_TOLERANCE)
               & (out.agreement == 1.0))
    return int((inside.cpu() & collide & (step.cpu() >= MIN_DISTANCE)).sum())


def median_pairwise_distance(images: Tensor) -> float | None:
    """Median L2 distance over all pairs of the images (N, C, H, W): the typical gap between two inputs."""
    if len(images) < 2:
        return None
    return float(torch.pdist(images.flatten(1).double()).median())
