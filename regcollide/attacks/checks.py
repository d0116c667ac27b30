"""Sanity flags for robustness evaluations.

Each check returns a list of :class:`Flag` (a machine-readable ``id``, a ``message`` that says what to do,
and a ``severity``); an empty list means the check passed. ``Flag`` is the one flag type of every
evaluator result in regcollide; in JSON a flag is ``{"id", "message", "severity"}``. Flags never stop an
evaluation: a flagged result is still reported, with its flags.

The checks follow N. Carlini, A. Athalye, N. Papernot, W. Brendel, J. Rauber, D. Tsipras, I. Goodfellow,
A. Madry, A. Kurakin, "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019, and the checks
shipped with AutoAttack (F. Croce, M. Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from regcollide._modes import eval_mode

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Flag:
    """One finding about an evaluation: ``id`` for machines, ``message`` for people.

    ``severity`` is ``"info"`` (a fact about how the number was computed, e.g. an approximation),
    ``"warning"`` (the number may be unreliable; the default) or ``"error"`` (the number is wrong as
    reported). Frozen, so flags are hashable and duplicates collapse when shards are merged.
    """

    id: str
    message: str
    severity: str = "warning"

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"a flag id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.message, str):
            raise ValueError(f"flag {self.id!r}: the message must be a string, got {type(self.message).__name__}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"flag {self.id!r}: severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "message": self.message, "severity": self.severity}

    @classmethod
    def from_dict(cls, data: Flag | Mapping[str, str]) -> Flag:
        """A flag back from its JSON form (a ready ``Flag`` passes through); anything else is a ValueError."""
        if isinstance(data, Flag):
            return data
        if not isinstance(data, Mapping) or not {"id", "message"} <= set(data):
            raise ValueError(f"a flag must be a Flag or a mapping with 'id' and 'message', got {data!r}")
        return cls(id=data["id"], message=data["message"], severity=data.get("severity", "warning"))


def merge_flags(*groups: Iterable[Flag | Mapping[str, str]]) -> list[Flag]:
    """The distinct flags of several results (e.g. process shards), each once, in first-seen order."""
    return list(dict.fromkeys(Flag.from_dict(f) for group in groups for f in group))


def check_batch(images: Tensor, labels: Tensor | None = None) -> None:
    """Refuse a batch no evaluator can measure honestly: images must be finite and in [0, 1].

    Every budget ε in regcollide is in pixel units of [0, 1] images (normalization lives inside the
    model), so images outside that box mean the caller normalized twice or passed raw 0-255 pixels.
    Raises ValueError with one line saying what to do.
    """
    if not torch.is_tensor(images) or not images.is_floating_point():
        got = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"images must be a floating-point tensor in [0, 1], got {got}")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or inf: pass finite images in [0, 1]")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(f"images must lie in [0, 1] (models normalize internally), got values in "
                         f"[{float(images.min()):.4g}, {float(images.max()):.4g}]: do not normalize them yourself")
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images) or labels.is_floating_point()):
        raise ValueError(f"labels must be one integer per image, shape ({len(images)},), got "
                         f"{tuple(labels.shape)} {labels.dtype}")


NON_MONOTONE = "non_monotone_accuracy"
LARGE_EPS = "large_eps_accuracy"
UNSTABLE_STEPS = "unstable_steps"
UNSTABLE_RESTARTS = "unstable_restarts"
ZERO_GRADIENTS = "zero_gradients"
PROBABILITY_OUTPUTS = "probability_outputs"
RANDOMIZED_FORWARD = "randomized_forward"


def check_monotone(eps: Sequence[float], accuracy: Sequence[float], tol: float = 0.0) -> list[Flag]:
    """Accuracy measured by independent attacks must not grow with ε (a larger ball contains the smaller)."""
    pairs = sorted(zip(eps, accuracy))
    bad = [(e0, a0, e1, a1) for (e0, a0), (e1, a1) in pairwise(pairs) if a1 > a0 + tol]
    if not bad:
        return []
    e0, a0, e1, a1 = bad[0]
    return [Flag(NON_MONOTONE, f"accuracy rises from {a0:.4f} at eps={e0:g} to {a1:.4f} at eps={e1:g}: "
                               "the attack is not converging (Carlini et al. 2019, sec. 4.4)")]


def check_large_eps(accuracy: float, eps: float) -> list[Flag]:
    """At a budget that covers the whole image box no undefended model keeps any accuracy."""
    if accuracy <= 0:
        return []
    return [Flag(LARGE_EPS, f"accuracy {accuracy:.4f} > 0 at eps={eps:g}, where any image is reachable: "
                            "gradients are likely masked or the attack is broken")]


def check_stability(accuracy: float, stronger_accuracy: float, what: str, tol: float = 0.02) -> list[Flag]:
    """Doubling the steps or restarts should barely move a converged attack's robust accuracy."""
    change = abs(accuracy - stronger_accuracy)
    if change <= tol:
        return []
    flag_id = UNSTABLE_STEPS if what == "steps" else UNSTABLE_RESTARTS
    return [Flag(flag_id, f"doubling {what} changes robust accuracy from {accuracy:.4f} to "
                          f"{stronger_accuracy:.4f} (> {tol:g}): the attack has not converged; "
                          "report the stronger setting")]


@torch.no_grad()
def check_probability_outputs(model: nn.Module, images: Tensor, atol: float = 1e-4) -> list[Flag]:
    """Outputs that are non-negative and sum to 1 are probabilities: cross-entropy on them is wrong."""
    with eval_mode(model):
        out = model(images)  # (N, K)
    if (out >= 0).all() and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=atol):
        return [Flag(PROBABILITY_OUTPUTS, "model outputs look like probabilities (non-negative rows "
                                     "summing to 1), not logits: remove the final softmax")]
    return []


@torch.no_grad()
def check_randomness(model: nn.Module, images: Tensor, rtol: float = 1e-5) -> list[Flag]:
    """Two eval-mode forwards of the same batch must agree; otherwise use EOT-style attacks."""
    with eval_mode(model):
        a, b = model(images), model(images)  # (N, K) each
    if torch.allclose(a, b, rtol=rtol, atol=rtol * float(a.abs().max().clamp_min(1e-12))):
        return []
    return [Flag(RANDOMIZED_FORWARD, "two eval-mode forward passes differ (dropout left on or a "
                                "randomized defense): PGD results are unreliable, use EOT")]


def check_zero_gradients(model: nn.Module, images: Tensor, labels: Tensor) -> list[Flag]:
    """Any correctly classified sample whose input gradient is exactly zero signals gradient masking.

    Uses the logit margin (true logit minus best other), which unlike softmax cross-entropy does not
    underflow for confidently classified samples, so a zero here means a truly flat model.
    """
    with eval_mode(model):
        x = images.detach().clone().requires_grad_(True)
        logits = model(x)  # (N, K)
        correct = logits.argmax(1) == labels
        if not correct.any():
            return []
        true = logits.gather(1, labels[:, None])[:, 0]
        other = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
        if not x.requires_grad or not logits.requires_grad:
            return [Flag(ZERO_GRADIENTS, "the output does not depend differentiably on the input")]
        grad = torch.autograd.grad((true - other)[correct].sum(), x, allow_unused=True)[0]
    if grad is None:
        zero = int(correct.sum())
    else:
        zero = int((grad.reshape(len(x), -1)[correct].abs().amax(1) == 0).sum())
    if zero == 0:
        return []
    return [Flag(ZERO_GRADIENTS, f"{zero} of {int(correct.sum())} correctly classified samples have an "
                                 "all-zero input gradient (gradient masking, e.g. a non-differentiable "
                                 "step): gradient attacks cannot be trusted, try a black-box attack")]


def model_checks(model: nn.Module, images: Tensor, labels: Tensor) -> list[Flag]:
    """The checks that need only the model and a batch: probabilities, randomness, zero gradients."""
    return (check_probability_outputs(model, images) + check_randomness(model, images)
            + check_zero_gradients(model, images, labels))
