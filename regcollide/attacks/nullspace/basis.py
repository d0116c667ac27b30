"""Kernel bases of the first weight layer W1, in pixel space, for the Null-space search.

Ozbulak, Gasparyan, Rao, De Neve, Van Messem, "Exact Feature Collisions in Neural Networks" (arXiv 2022),
Definition 4: x̂ = x + β·φ with φ ∈ ker(W1) leaves every feature after W1, and so the output, unchanged.

This file answers, for a model and an input geometry (C, H, W), *which perturbations are exact kernel
vectors of the whole first-layer operator A* (not just of the per-patch matrix), and builds a
:class:`KernelPlan`:

- ``linear``: W1 is a Linear on the flattened image (or on rows of it): each row is one "patch".
- ``patchify``: a conv with stride == kernel, no padding, dilation 1: patches do not overlap, so any
  per-patch kernel vector, chosen independently for every patch, is in ker A.
- ``periodic``: any other conv, restricted to patterns periodic with the stride. Such a pattern q
  (C × s_h × s_w) gives A·tile(q) = M·q for a small matrix M that we build column by column by applying
  A itself (padding borders included). If ker M ≠ 0 the collision is exact for tiled patterns.
- ``approximate``: no exact kernel: the smallest right singular vectors of A, found matrix-free
  (LOBPCG on AᵀA, with A = conv and Aᵀ = its adjoint by autograd). ``exact`` is false.

A per-channel affine normalization before W1 (``Normalize``, a detector's own transform) is folded in: we
*measure* the map image → W1-input with three probe images and require it to be per-pixel affine,
u = a ⊙ x + b; then ker(W1·diag(a)) is the kernel in pixel space (b is a constant and drops out).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regcollide._tracing import StopForward, first_weight_layer
from regcollide.attacks.nullspace.outputs import call_model, first_call_hook
from regcollide.audit.matrices import layer_matrix


class NullspaceError(ValueError):
    """The Null-space search does not apply to this model (no kernel, unsupported first layer, ...)."""


@dataclass
class KernelPlan:
    """How to build perturbations for one model and input geometry.

    ``basis`` (m, d) has orthonormal rows in "patch space": for linear/patchify a patch of d pixels, for
    periodic one stride-periodic pattern, for approximate the whole image. ``tile``/``untile`` move
    between patch space (N, L, d) and images (N, C, H, W).
    """

    kind: str  # linear | patchify | periodic | approximate
    exact: bool
    reason: str
    layer_name: str
    layer_kind: str
    nullity: int  # dim ker(W1 · diag(a)) of the per-patch matrix (out, d)
    patch_dim: int  # d of the per-patch matrix
    input_shape: tuple[int, int, int]
    basis: Tensor  # (m, d) float64, orthonormal rows
    scale: Tensor  # (C, H, W) float64: a, the measured slope of image -> W1 input
    normalization_folded: bool
    patch: tuple[int, int] = (1, 1)  # patch / period (h, w) for patchify and periodic
    ratios: Tensor | None = None  # ‖A v‖/‖v‖ of each basis vector (approximate and periodic)
    sigma_max: float = float("nan")
    extra: dict = field(default_factory=dict)

    @property
    def patches(self) -> int:
        c, h, w = self.input_shape
        if self.kind == "patchify":
            return (h // self.patch[0]) * (w // self.patch[1])
        if self.kind == "linear":
            return c * h * w // self.patch_dim
        return 1

    @property
    def independent_patches(self) -> bool:
        """Each patch may carry its own kernel vector (and its own β_i) while staying exact."""
        return self.kind in ("linear", "patchify")

    def tile(self, coeffs: Tensor) -> Tensor:
        """Patch-space vectors (N, L, d) -> image perturbations (N, C, H, W)."""
        c, h, w = self.input_shape
        n = coeffs.shape[0]
        if self.kind in ("linear", "approximate"):
            return coeffs.reshape(n, c, h, w)
        ph, pw = self.patch
        if self.kind == "patchify":
            rows, cols = h // ph, w // pw
            image = F.fold(coeffs.transpose(1, 2), (rows * ph, cols * pw), self.patch, stride=self.patch)
            return F.pad(image, (0, w - cols * pw, 0, h - rows * ph))  # pixels no window sees stay 0
        q = coeffs.reshape(n, c, ph, pw)  # periodic
        reps = (1, 1, -(-h // ph), -(-w // pw))
        return q.repeat(*reps)[:, :, :h, :w]

    def untile(self, images: Tensor) -> Tensor:
        """Images (N, C, H, W) -> patch space (N, L, d); the adjoint-like inverse of :meth:`tile`.

        For ``periodic`` it averages each residue class, the orthogonal projection onto tiled patterns.
        """
        n, c, h, w = images.shape
        if self.kind in ("linear", "approximate"):
            return images.reshape(n, -1, self.patch_dim)
        ph, pw = self.patch
        if self.kind == "patchify":
            return F.unfold(images, self.patch, stride=self.patch).transpose(1, 2)  # (N, L, d)
        padded = F.pad(images, (0, -w % pw, 0, -h % ph))
        counts = F.pad(torch.ones_like(images[:1, :1]), (0, -w % pw, 0, -h % ph))
        fold = padded.reshape(n, c, padded.shape[2] // ph, ph, padded.shape[3] // pw, pw).sum(dim=(2, 4))
        count = counts.reshape(1, 1, counts.shape[2] // ph, ph, counts.shape[3] // pw, pw).sum(dim=(2, 4))
        return (fold / count).reshape(n, 1, -1)


# --------------------------------------------------------------------------------------------- probing

def probe_input_map(model: nn.Module, module: nn.Module, input_shape: tuple[int, int, int]
                    ) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Measure u(x), the input W1 receives, as a per-pixel affine map u = a ⊙ x + b of the image.

    Returns (a, b) as (C, H, W) float64 tensors and the shape of u for one image. Raises NullspaceError
    when the map is not per-pixel affine (a resize or a non-linear step before W1).
    """
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    generator = torch.Generator().manual_seed(1234)
    probes = torch.stack([torch.zeros(input_shape), torch.ones(input_shape),
                          torch.rand(input_shape, generator=generator)]).to(device=device, dtype=dtype)
    inputs = []
    for probe in probes:
        store: dict = {}
        with first_call_hook(module, store, stop=True), torch.no_grad():
            try:
                call_model(model, probe[None])
            except StopForward:
                pass
        if "input" not in store:
            raise NullspaceError("the first weight layer did not run on an image; cannot probe its input.")
        inputs.append(store["input"].double())
    u0, u1, ur = inputs
    if u0.numel() != probes[0].numel():
        raise NullspaceError(
            f"the first weight layer sees an input of shape {tuple(u0.shape)}, not a per-pixel map of the "
            f"{tuple(input_shape)} image (the model resizes or reshapes it first): pass images at the size the "
            "model uses internally (for torchvision detectors, create them with min_size/max_size equal to "
            "the image size).")
    a, b = (u1 - u0).reshape(input_shape), u0.reshape(input_shape)
    a = exact_scale(model, a)
    predicted = a * probes[2].double() + b
    tol = 1e-4 * (1 + ur.abs().max().item())
    if (predicted.flatten() - ur.flatten()).abs().max().item() > tol:
        raise NullspaceError("the map from the image to the first weight layer's input is not per-pixel "
                             "affine, so no normalization can be folded into W1.")
    return a, b, tuple(u0.shape[1:])


def exact_scale(model: nn.Module, measured: Tensor) -> Tensor:
    """The measured slope (float32 precision) replaced by 1/std of a normalization module when they agree.

    Candidates: ``Normalize.std`` buffers and torchvision detectors' ``image_std``. Without a match the
    measured slope is kept; either way the collision residuals are measured afterwards.
    """
    for module in model.modules():
        std = getattr(module, "std", None) if hasattr(module, "mean") else getattr(module, "image_std", None)
        if std is None:
            continue
        std = torch.as_tensor(std, dtype=torch.float64, device=measured.device).flatten()
        if std.numel() != measured.shape[0]:
            continue
        candidate = (1 / std).view(-1, 1, 1).expand_as(measured)
        if torch.allclose(candidate, measured, rtol=1e-5, atol=0):
            return candidate.clone()
    return measured


# --------------------------------------------------------------------------------------------- kernels

def kernel_basis(matrix: Tensor, rtol: float | None = None) -> tuple[Tensor, int]:
    """Orthonormal basis (m, in) of ker(matrix) in float64, and the rank.

    Rank counts σ_i > σ_max · max(out, in) · eps(float32) (the audit's convention, that of
    ``torch.linalg.matrix_rank``), unless ``rtol`` is given.
    """
    matrix = matrix.detach().double()
    out_dim, in_dim = matrix.shape
    # a complete V needs full matrices only when out < in; for tall matrices that would allocate out × out
    _, sigma, vh = torch.linalg.svd(matrix, full_matrices=out_dim < in_dim)
    tol = (rtol if rtol is not None else max(out_dim, in_dim) * torch.finfo(torch.float32).eps)
    tol = tol * (sigma[0].item() if sigma.numel() else 0.0)
    rank = int((sigma > tol).sum())
    return vh[rank:].contiguous(), rank


def periodic_rtol(matrix: Tensor) -> float:
    """Relative kernel tolerance for the stride-periodic operator M (rows ≫ cols): min(rows, cols)·eps(float32).

    M has one column per pixel of a period (C·s_h·s_w, about 12) and one row per output value (about
    800,000 for a 224-pixel ResNet stem). ``max(rows, cols)·eps`` would then be ≈ 0.1: every pattern that
    the conv attenuates to 10% of σ_max would count as "kernel". The columns are float64 convolutions of
    float32 weights, so a true kernel vector has σ/σ_max at float64 round-off; rounding the weights to
    float32 moves each σ by at most about √cols·eps(float32)·σ_max. The factor of the *smaller* side
    covers that, and nothing the conv really sees falls under it.
    """
    return min(matrix.shape) * torch.finfo(torch.float32).eps


def patch_matrix(module: nn.Module, kind: str) -> Tensor:
    """The true per-patch matrix (out, d): block-diagonal over groups, so grouped convs are right too."""
    if kind == "linear":
        return layer_matrix(module, "paper").detach()
    if kind != "conv2d":
        raise NullspaceError(f"first weight layer of kind '{kind}' is not supported by the Null-space search; "
                             "supported: Linear and Conv2d.")
    if module.groups == 1:
        return layer_matrix(module, "paper").detach()
    return torch.block_diag(*[block.detach() for block in layer_matrix(module, "grouped")])


class ConvOperator:
    """A: image perturbation (N, C, H, W) -> W1 output change, bias-free, with the folded slope a."""

    def __init__(self, module: nn.Conv2d, scale: Tensor):
        self.module, self.scale = module, scale
        self.weight = module.weight.detach().double()

    def __call__(self, delta: Tensor) -> Tensor:
        return self.module._conv_forward(delta * self.scale, self.weight, None)

    def adjoint(self, y: Tensor, shape: tuple[int, ...]) -> Tensor:
        x = torch.zeros(shape, dtype=torch.float64, device=y.device, requires_grad=True)
        (grad,) = torch.autograd.grad(self(x), x, grad_outputs=y)
        return grad


def periodic_matrix(op: ConvOperator, input_shape: tuple[int, int, int], period: tuple[int, int]) -> Tensor:
    """M: (out·H'·W', C·s_h·s_w), the operator restricted to stride-periodic patterns, one column per pixel."""
    c, h, w = input_shape
    ph, pw = period
    eye = torch.eye(c * ph * pw, dtype=torch.float64, device=op.weight.device).reshape(-1, c, ph, pw)
    tiles = eye.repeat(1, 1, -(-h // ph), -(-w // pw))[:, :, :h, :w]  # (D, C, H, W)
    with torch.no_grad():
        return op(tiles).reshape(eye.shape[0], -1).T


def smallest_singular_vectors(op: ConvOperator, input_shape: tuple[int, int, int], k: int, seed: int = 0,
                              maxiter: int = 200, tol: float = 1e-5) -> tuple[Tensor, Tensor, float]:
    """The k smallest right singular vectors (k, C·H·W) of A, their σ, and σ_max, matrix-free.

    LOBPCG (scipy) on AᵀA with a few extra block vectors for faster convergence; σ_max by power iteration.
    """
    from scipy.sparse.linalg import LinearOperator, lobpcg

    dim = int(np.prod(input_shape))
    device = op.weight.device

    def gram(block: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(block.T), device=device).reshape(-1, *input_shape)
        with torch.enable_grad():
            y = op.adjoint(op(x).detach(), tuple(x.shape))
        return y.reshape(x.shape[0], -1).T.cpu().numpy()

    operator = LinearOperator((dim, dim), matvec=lambda v: gram(v.reshape(-1, 1)).ravel(), matmat=gram,
                              dtype=np.float64)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((dim, 1))
    for _ in range(60):  # σ_max² ≈ top eigenvalue of AᵀA; we only need it as a scale
        v = gram(v)
        v /= np.linalg.norm(v)
    sigma_max = float(np.sqrt(np.linalg.norm(gram(v))))
    block = rng.standard_normal((dim, k + 4))
    with warnings.catch_warnings():  # not reaching tol is fine: the ratio we report is measured below
        warnings.simplefilter("ignore", UserWarning)
        values, vectors = lobpcg(operator, block, largest=False, tol=tol * sigma_max ** 2, maxiter=maxiter)
    order = np.argsort(values)[:k]
    vecs = torch.as_tensor(vectors[:, order].T.copy(), device=device)  # (k, D)
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    with torch.no_grad():
        ratios = op(vecs.reshape(-1, *input_shape)).reshape(k, -1).norm(dim=1)
    return vecs, ratios, sigma_max


# --------------------------------------------------------------------------------------------- plans

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def build_plan(model: nn.Module, input_shape: tuple[int, int, int], approx_vectors: int = 1, seed: int = 0,
               rtol: float | None = None) -> KernelPlan:
    """The :class:`KernelPlan` of ``model`` for images of ``input_shape`` (C, H, W); cached per W1 weights."""
    input_shape = tuple(int(s) for s in input_shape)
    layer, _source = first_weight_layer(model, input_shape)
    module, kind = layer.module, layer.kind
    weight = module.weight
    key = (input_shape, weight._version, weight.data_ptr(), approx_vectors, seed, rtol)
    cached = _CACHE.get(module, {}).get(key)
    if cached is not None:
        return cached
    matrix = patch_matrix(module, kind)  # (out, d)
    a, b, u_shape = probe_input_map(model, module, input_shape)
    folded = bool((a - 1).abs().max() > 1e-6 or b.abs().max() > 1e-6)
    c, h, w = input_shape
    common = dict(layer_name=layer.name, layer_kind=kind, input_shape=input_shape, scale=a,
                  normalization_folded=folded)
    if kind == "linear":
        return _store(module, key, _require_kernel(_linear_plan(matrix, a, u_shape, rtol, common)))
    if tuple(u_shape) != input_shape:
        raise NullspaceError(f"the first conv sees input {u_shape}, not the image {input_shape}.")
    if not torch.allclose(a, a[:, :1, :1].expand_as(a)):
        raise NullspaceError("the map from the image to the first conv is not per-channel: cannot fold it.")
    channel_scale = a[:, 0, 0]  # (C,)
    kh, kw = module.kernel_size
    d = matrix.shape[1]
    folded_matrix = matrix.double() * channel_scale.repeat_interleave(kh * kw)  # W1 · diag(a), (out, C·kh·kw)
    per_patch, rank = kernel_basis(folded_matrix, rtol)
    nullity = d - rank
    stride, dilation = tuple(module.stride), tuple(module.dilation)
    padding = module.padding
    no_padding = padding == "valid" or (not isinstance(padding, str) and all(p == 0 for p in padding))
    if stride == (kh, kw) and no_padding and dilation == (1, 1):
        plan = KernelPlan("patchify", True, "patchify conv (stride == kernel, no padding, dilation 1): "
                          "non-overlapping patches, so per-patch kernel vectors are exact",
                          nullity=nullity, patch_dim=d, basis=per_patch, patch=(kh, kw),
                          extra={"folded": folded_matrix}, **common)
        return _store(module, key, _require_kernel(plan))
    plan = _overlapping_conv_plan(module, channel_scale, input_shape, nullity, per_patch, rtol, approx_vectors, seed,
                                  common)
    return _store(module, key, plan)


def _linear_plan(matrix: Tensor, a: Tensor, u_shape: tuple, rtol: float | None, common: dict) -> KernelPlan:
    """A Linear first layer: the kernel of W1·diag(a) is exact for every image."""
    d = matrix.shape[1]
    if u_shape[-1] != d:
        raise NullspaceError(f"Linear first layer expects {d} inputs but sees {u_shape}.")
    # rows of the flattened image are the patches; a varies per pixel, so every row has its own
    # folded matrix; we only support the (common) case of identical rows (one row or a per-channel a).
    a_rows = a.reshape(-1, d)
    if not torch.allclose(a_rows, a_rows[:1].expand_as(a_rows)):
        raise NullspaceError("the normalization before the Linear first layer differs between its rows.")
    folded_matrix = matrix.double() * a_rows[0]  # W1 · diag(a)
    basis, rank = kernel_basis(folded_matrix, rtol)
    plan = KernelPlan("linear", True, "Linear first layer: W1·φ = 0 exactly for φ ∈ ker(W1)",
                      nullity=d - rank, patch_dim=d, basis=basis, extra={"folded": folded_matrix}, **common)
    return plan


def _overlapping_conv_plan(module: nn.Module, channel_scale: Tensor, input_shape: tuple[int, int, int], nullity: int,
                           per_patch: Tensor, rtol: float | None, approx_vectors: int, seed: int,
                           common: dict) -> KernelPlan:
    """An overlapping conv: an exact stride-periodic kernel if one exists, else the smallest singular vectors."""
    c, h, w = input_shape
    kh, kw = module.kernel_size
    stride, dilation, padding = tuple(module.stride), tuple(module.dilation), module.padding
    op = ConvOperator(module, channel_scale.view(-1, 1, 1).to(module.weight.device))
    geometry = f"kernel {kh}x{kw}, stride {stride}, padding {padding}, dilation {dilation}"
    m = periodic_matrix(op, input_shape, stride)  # (out·H'·W', C·s_h·s_w)
    periodic, prank = kernel_basis(m, rtol if rtol is not None else periodic_rtol(m))
    if periodic.shape[0] > 0:
        ratios = (m @ periodic.T).norm(dim=0) / torch.linalg.matrix_norm(m, 2)  # ‖M q‖ / ‖M‖ per vector
        plan = KernelPlan("periodic", True, f"overlapping conv ({geometry}): exact kernel of dimension "
                          f"{periodic.shape[0]} among stride-periodic patterns (borders included)",
                          nullity=nullity, patch_dim=periodic.shape[1], basis=periodic, patch=stride,
                          ratios=ratios, **common)
        return plan
    vecs, ratios, sigma_max = smallest_singular_vectors(op, input_shape, max(1, approx_vectors), seed=seed)
    plan = KernelPlan("approximate", False,
                      f"overlapping conv ({geometry}): tiling per-patch kernel vectors is not a kernel vector of "
                      f"the whole operator, and no stride-periodic pattern (rank {prank} of "
                      f"{m.shape[1]}) is one either; using the smallest right singular vectors of the operator",
                      nullity=nullity, patch_dim=c * h * w, basis=vecs, ratios=ratios / sigma_max,
                      sigma_max=sigma_max, **common)
    plan.extra["per_patch_basis"] = per_patch
    return plan


def _require_kernel(plan: KernelPlan) -> KernelPlan:
    if plan.basis.shape[0] == 0:
        raise NullspaceError(
            f"the first weight layer '{plan.layer_name}' has nullity 0 (its {plan.patch_dim} inputs per patch "
            "are all seen): there is no null space to search. Exact collisions need a first layer with more "
            "inputs per patch than independent outputs (e.g. a wider patch or fewer embedding channels).")
    return plan


def _store(module: nn.Module, key: tuple, plan: KernelPlan) -> KernelPlan:
    _CACHE.setdefault(module, {})[key] = plan
    return plan
