"""Perturbations from a kernel basis: the four modes of Ozbulak et al. (Section 4.2) and the box projection.

Ozbulak et al., "Exact Feature Collisions in Neural Networks" (arXiv 2022): P = β[φ…φ] (one kernel vector
repeated over every patch), a different kernel vector per patch, a random combination, and per-patch
multipliers β_i that confine the perturbation to a region (a mask). All in float64, in pixel space.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from regcollide.attacks.nullspace.basis import KernelPlan, NullspaceError, kernel_basis

MODES = ("repeat", "per_patch", "random", "masked")
ROUNDOFF = 1e-10  # float64 round-off tolerated on box constraints


def default_mask(plan: KernelPlan) -> Tensor:
    """A centred square covering about half the image, aligned to whole patches when patches exist. (H, W)."""
    _, h, w = plan.input_shape
    mask = torch.zeros(h, w, dtype=torch.bool)
    if plan.kind == "patchify":
        ph, pw = plan.patch
        rows, cols = h // ph, w // pw
        r, c = math.ceil(rows / math.sqrt(2)), math.ceil(cols / math.sqrt(2))
        top, left = (rows - r) // 2, (cols - c) // 2
        mask[top * ph:(top + r) * ph, left * pw:(left + c) * pw] = True
        return mask
    side_h, side_w = math.ceil(h / math.sqrt(2)), math.ceil(w / math.sqrt(2))
    top, left = (h - side_h) // 2, (w - side_w) // 2
    mask[top:top + side_h, left:left + side_w] = True
    return mask


def beta_scale(plan: KernelPlan) -> float:
    """Norm of a unit-β perturbation: 1 per patch; a whole-image direction gets the norm of a patch tiling."""
    if plan.kind != "approximate":
        return 1.0
    c, h, w = plan.input_shape
    d = plan.extra["per_patch_basis"].shape[1]
    return math.sqrt(c * h * w / d)


def masked_basis(plan: KernelPlan, mask: Tensor) -> Tensor:
    """For a single-patch plan (Linear on the whole image): the kernel vectors that vanish outside ``mask``.

    With B (m, d) orthonormal, v = Bᵀc vanishes outside the mask iff c ∈ ker(B[:, outside]ᵀ); C·B keeps
    orthonormal rows because C does.
    """
    c, h, w = plan.input_shape
    inside = mask.to(plan.basis.device).expand(c, h, w).reshape(-1)
    outside = plan.basis[:, ~inside]  # (m, |outside|)
    coeffs, _ = kernel_basis(outside.T) if outside.shape[1] else (torch.eye(plan.basis.shape[0]).double(), 0)
    basis = coeffs.to(plan.basis) @ plan.basis
    basis[:, ~inside] = 0.0  # they are round-off (~1e-16) already; exact zeros keep the region promise
    if basis.shape[0] == 0:
        raise NullspaceError(f"no kernel vector of '{plan.layer_name}' is supported inside the mask "
                             f"({int(mask.sum())} of {h * w} pixels): use a larger mask.")
    return basis


def make_perturbations(plan: KernelPlan, n: int, mode: str, collisions: int, beta: float,
                       mask: Tensor | None, generator: torch.Generator) -> tuple[Tensor, str | None]:
    """(N·K, C, H, W) float64 perturbations, sample-major; plus a note when the mode breaks exactness."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    basis = plan.basis  # (m, d)
    device = basis.device
    patches = plan.patches
    note = None
    weights = torch.ones(patches, dtype=torch.float64)  # β_i / β per patch
    if mode == "masked":
        mask = (default_mask(plan) if mask is None else mask.bool()).cpu()
        if tuple(mask.shape) != plan.input_shape[1:]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (H, W) = {plan.input_shape[1:]}.")
        if plan.kind == "linear" and patches == 1:
            basis = masked_basis(plan, mask)
        elif plan.independent_patches:
            ones = torch.ones(1, *plan.input_shape, dtype=torch.float64)
            cover = plan.untile(ones * mask.double())[0] / plan.untile(ones)[0]  # (L, d) share inside
            weights = (cover.min(dim=1).values >= 1.0).double()  # β_i = β only for patches fully inside
            if weights.sum() == 0:
                raise NullspaceError("no patch lies fully inside the mask: use a larger mask.")
        else:
            note = f"masked mode restricts a {plan.kind} pattern to a region, which leaves its kernel"
    m = basis.shape[0]
    if mode in ("per_patch",) and not plan.independent_patches:
        note = note or f"a {plan.kind} plan cannot vary per patch; each collision uses its own basis vector"
    coeffs = torch.zeros(n, collisions, patches, m, dtype=torch.float64)
    if mode == "random":
        coeffs = torch.randn(n, collisions, patches, m, generator=generator, dtype=torch.float64)
    elif mode == "per_patch" and plan.independent_patches:
        index = torch.randint(m, (n, collisions, patches), generator=generator)
        coeffs.scatter_(3, index.unsqueeze(-1), 1.0)
    else:  # repeat / masked / per_patch on a global plan: one vector for the whole image per collision
        order = torch.randperm(m, generator=generator)
        index = order[torch.arange(collisions) % m]  # distinct while collisions ≤ m
        coeffs[:, torch.arange(collisions), :, index] = 1.0
    coeffs = coeffs / coeffs.norm(dim=3, keepdim=True).clamp_min(1e-300)
    coeffs = coeffs * (beta * beta_scale(plan)) * weights.view(1, 1, -1, 1)
    vectors = coeffs.reshape(n * collisions, patches, m).to(device) @ basis  # (N·K, L, d)
    delta = plan.tile(vectors)
    if note is not None and mode == "masked":
        delta = delta * mask.to(device).double()
    return delta, note


def _fit_group(target: np.ndarray, room_low: np.ndarray, room_high: np.ndarray, equality: np.ndarray | None,
               matrix: np.ndarray | None) -> np.ndarray:
    """The perturbation in the kernel and the room that goes furthest along ``target``, capped at ‖target‖.

    An LP. With ``equality`` (the folded W1 patch matrix, out × d) the unknown is δ itself: W·δ = 0 and
    simple bounds, which solves fastest. With ``matrix`` G (pixels × m) the unknown is the coefficient
    vector c of δ = G·c under two-sided inequality constraints (few columns: periodic/approximate plans).
    """
    from scipy.optimize import linprog

    if equality is not None:
        result = linprog(-target, A_eq=equality, b_eq=np.zeros(equality.shape[0]),
                         bounds=np.stack([room_low, room_high], axis=1), method="highs")
        delta = result.x if result.status == 0 else np.zeros_like(target)
    else:
        result = linprog(-(matrix.T @ target), A_ub=np.vstack([matrix, -matrix]),
                         b_ub=np.concatenate([room_high, -room_low]), bounds=(None, None), method="highs")
        delta = matrix @ result.x if result.status == 0 else np.zeros_like(target)
    # δ = 0 is always feasible, so a failed solve is a solver hiccup: we then stay at the centre
    size, wanted = np.linalg.norm(delta), np.linalg.norm(target)
    return delta * min(1.0, wanted / size) if size > 0 else delta


def project_into_box(plan: KernelPlan, basis: Tensor, centre: Tensor, delta: Tensor, low: Tensor, high: Tensor,
                     progress: bool = False, iters: int = 500, min_share: float = 0.5) -> Tensor:
    """A perturbation in span(basis) (tiled as ``plan`` says) with centre + δ ∈ [low, high], never clipped.

    1. Alternating projections between the subspace and the box, started at the requested δ (a δ that
       already fits is left unchanged), then a per-group shrink factor t ∈ [0, 1] so the result fits exactly
       (a scaled kernel vector is still one; groups are patches when patches are independent, else images).
    2. Groups that kept less than ``min_share`` of the requested norm (alternating projections can drift
       towards δ = 0 when the box is tight, e.g. black MNIST background) get an LP instead
       (:func:`_fit_group`): the kernel vector in the box that goes furthest along the requested δ.
    Pixels with low == high == centre stay put (how mode "masked" confines a single-patch plan).
    ``centre`` must lie in the box. All tensors (N, C, H, W) float64.
    """
    independent = plan.independent_patches
    if independent:
        to_groups, from_groups = plan.untile, plan.tile  # (N, C, H, W) <-> (N, L, d)
    else:
        to_groups = lambda t: t.reshape(t.shape[0], 1, -1)  # noqa: E731
        from_groups = lambda g: g.reshape(delta.shape)  # noqa: E731

    def to_subspace(d: Tensor) -> Tensor:
        return plan.tile(plan.untile(d) @ basis.T @ basis)

    def shrink(d: Tensor) -> Tensor:
        # the largest t with centre + t·δ in the box, pixel by pixel, then the minimum over each group;
        # violations below ROUNDOFF are float64 round-off of the projection and do not count
        room = torch.where(d > 0, (high - centre + ROUNDOFF) / d,
                           torch.where(d < 0, (low - centre - ROUNDOFF) / d, torch.inf))
        factor = to_groups(room.clamp(0.0, 1.0)).amin(dim=2, keepdim=True)  # (N, L, 1)
        return from_groups(to_groups(d) * factor)

    d = to_subspace(delta)
    for _ in range(iters):
        boxed = (centre + d).clamp(low, high) - centre
        if (boxed - d).abs().max() <= ROUNDOFF:
            break
        d = to_subspace(boxed)
    d = shrink(d)
    wanted = to_groups(delta)
    groups = to_groups(d)
    todo = (groups.norm(dim=2) < min_share * wanted.norm(dim=2)).nonzero().tolist()
    if todo:
        equality = plan.extra["folded"].cpu().numpy() if independent else None  # (out, d) W1·diag(a)
        matrix = None if independent else to_groups(plan.tile(basis.unsqueeze(1)))[:, 0].T.cpu().numpy()
        room_low, room_high = to_groups(low - centre), to_groups(high - centre)
        for i, g in tqdm(todo, disable=not progress, desc="kernel ∩ box (LP)", leave=False):
            found = _fit_group(wanted[i, g].cpu().numpy(), room_low[i, g].cpu().numpy(),
                               room_high[i, g].cpu().numpy(), equality, matrix)
            groups[i, g] = torch.as_tensor(found, device=delta.device)
        # the LP meets W·δ = 0 only to solver tolerance: project exactly onto the kernel, then fit again
        d = shrink(to_subspace(from_groups(groups)))
    # remove the ≤ ROUNDOFF overshoot, far below float32 resolution (6e-8), so x̂ lies exactly in the box
    fixed = (centre + d).clamp(low, high) - centre
    assert (fixed - d).abs().max() <= 2 * ROUNDOFF
    return fixed
