"""Minimum-singular-value penalty: keep every layer matrix well conditioned so excess nullity cannot grow.

Ozbulak et al. ("Exact Feature Collisions in Neural Networks", arXiv 2022) show that a layer matrix with a
non-trivial kernel lets distinct inputs collide exactly. A matrix whose smallest singular value stays a
fixed fraction of its largest one has no kernel beyond the one its shape forces, so this penalty pushes
σ_min up *relative* to the scale of the matrix. Relative matters: an absolute σ_min penalty is satisfied by
inflating the weights, which a following BatchNorm undoes for free.

Measures (all 0 exactly when every singular value is equal, e.g. an orthogonal matrix, and all invariant
to scaling the weights):

- ``ratio``:  1 − σ_min / σ_max.
- ``rms``:    1 − σ_min / σ_rms, with σ_rms² the mean squared singular value; its denominator depends on
  every singular value, so its gradient is smoother than ``ratio``'s.
- ``logdet``: log(mean λ) − mean(log λ) over the eigenvalues λ = σ² of the Gram matrix, by the AM–GM
  inequality ≥ 0; computed with one Cholesky factorisation (a log-det isotropy measure).

How σ_min is computed. ``ratio`` and ``rms`` take σ_min (and σ_max) from a float64 tracker
(:mod:`regcollide.regularizers.tracking`): warm-started preconditioned Ritz steps on the weight matrix
itself, two passes over it per step, with a full float64 decomposition only on the first step, every
``refresh_every`` steps, or when the tracked pair fails its residual test (matrices with at most 10
columns or rows: the eigenvectors of their small float64 Gram, every step). All tracked matrices of a
model form one autograd node (:mod:`regcollide.regularizers.isotropy`). Value and gradient
(2·u σ vᵀ for λ = σ²) stay accurate for σ_min/σ_max from 1 down to 1e-6, where a float32 Gram matrix
reports noise (σ_min/σ_max ≈ 7e-4 for a true 1e-5). Stacks of several blocks (``convention="grouped"``
with groups, or ``conv_operator="fft"``) use a float64 batched SVD instead. ``logdet`` needs the whole
spectrum and uses one Cholesky factorisation of the Gram matrix of the smaller side, k × k with
k = min(out, in).

Wide layers (out < in). Their row Gram ``W Wᵀ`` (out × out) holds the ``out`` non-zero singular values,
so the penalty acts on the row space: it keeps the rows linearly independent (rank = out), i.e. it keeps
the nullity at its structural value in − out and removes the *excess* nullity training may create. It
cannot shrink the structural kernel: in − out input directions still map to zero, and the collisions they
allow (Ozbulak et al.'s Null-space search on a wide first layer) remain. Only a change of architecture
(out ≥ in) removes those.

Convolutions. By default a conv contributes its reshaped kernel, the paper convention of docs/design.md (or per
group blocks with ``convention="grouped"``). With ``conv_operator="fft"`` each stride-1, dilation-1 Conv2d
is instead treated as the linear operator it applies to its whole input: following Sedghi, Gupta & Long,
"The Singular Values of Convolutional Layers" (ICLR 2019), the singular values of the circular convolution
on an H × W input are the union, over the H·W frequencies, of the singular values of the out × in matrices
of the 2-D DFT of the kernel. The input size is recorded by a hook installed in ``setup``. For zero-padded
convs this circular operator is an approximation of the true one. Other convs keep the reshaped kernel.

Example::

    reg = build_regularizer("singular", measure="ratio")
    loss = F.cross_entropy(outputs, batch["label"]) + 0.1 * reg(model, batch, outputs)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from regcollide.audit.matrices import WeightLayer
from regcollide.regularizers.base import (
    Regularizer,
    check_positive,
    full_precision,
    lazy_term,
    scale_gradient,
    upcast,
    zero_like,
)
from regcollide.regularizers.isotropy import tracked_isotropy_sum
from regcollide.regularizers.selection import layer_stacks, select_layers, smaller_gram
from regcollide.regularizers.tracking import SingularTracker


def isotropy_from_eigenvalues(eigenvalues: Tensor, measure: str, jitter: float = 1e-6) -> Tensor:
    """Penalty from the Gram eigenvalues ``(B, k)`` of one operator (the union over B blocks).

    ``jitter`` is relative to the mean eigenvalue, so it keeps gradients finite at σ_min = 0 without
    breaking scale invariance or the exact zero at equal singular values.
    """
    lam = eigenvalues.clamp_min(0)
    mean = lam.mean()
    floor = jitter * mean
    low = lam.min() + floor
    if measure == "ratio":
        return 1 - torch.sqrt(low / (lam.max() + floor))
    if measure == "rms":
        return 1 - torch.sqrt(low / (mean + floor))
    if measure == "logdet":
        return torch.log(mean + floor) - torch.log(lam + floor).mean()
    raise ValueError(f"unknown measure {measure!r}; choose ratio, rms or logdet")


def squared_norm(tensor: Tensor) -> Tensor:
    """Σ|x|², one fused reduction (real or complex)."""
    return torch.linalg.vector_norm(tensor).square()


def logdet_isotropy(stack: Tensor, jitter: float = 1e-6) -> Tensor:
    """log(mean λ) − mean(log λ) of the Gram eigenvalues of ``stack`` ``(B, m, n)``, via Cholesky."""
    gram, _ = smaller_gram(stack)  # (B, k, k)
    blocks, k = gram.shape[0], gram.shape[-1]
    mean = squared_norm(stack) / (blocks * k)  # trace(Gram) / (B k) = mean eigenvalue
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(gram + (jitter * mean) * eye)
    if bool(info.any()):  # numerically indefinite (float32, nearly singular): eigenvalues are robust
        return isotropy_from_eigenvalues(torch.linalg.eigvalsh(gram), "logdet", jitter)
    mean_log = 2 * torch.log(factor.diagonal(dim1=-2, dim2=-1).real).sum() / (blocks * k)
    return torch.log(mean * (1 + jitter)) - mean_log


def conv_operator_stack(conv: nn.Conv2d, size: tuple[int, int]) -> Tensor:
    """Per-frequency matrices of a stride-1 Conv2d on a circular H × W input (Sedghi et al. 2019).

    Returns ``(G·H·W, out/G, in/G)`` complex: the union of their singular values is the set of singular
    values of the whole convolution operator (G = groups; a grouped conv is block diagonal per frequency).
    """
    height, width = size
    weight = conv.weight  # (out, in/G, kh, kw)
    out_channels, in_per_group = weight.shape[:2]
    groups = conv.groups
    spectrum = torch.fft.fft2(weight, s=(height, width))  # (out, in/G, H, W) complex
    spectrum = spectrum.reshape(groups, out_channels // groups, in_per_group, height, width)
    return spectrum.permute(0, 3, 4, 1, 2).reshape(-1, out_channels // groups, in_per_group)


def fft_eligible(module: nn.Module) -> bool:
    """Stride-1, dilation-1 Conv2d: the case the FFT operator view covers."""
    return (isinstance(module, nn.Conv2d) and module.stride == (1, 1) and module.dilation == (1, 1))


class MinSingularValuePenalty(Regularizer):
    """Scale-invariant minimum-singular-value penalty, averaged over the selected layers.

    Args:
        measure: ``ratio`` (1 − σ_min/σ_max), ``rms`` (1 − σ_min/σ_rms) or ``logdet`` (isotropy).
        convention: ``paper`` (reshaped kernel) or ``grouped`` (per-group blocks), as in the audit.
        conv_operator: ``reshape`` (default) or ``fft`` (operator singular values of stride-1 Conv2d).
        layers: regex on layer names (``regcollide.audit.matrices.iter_weight_layers``); empty selects all.
        lazy_every: while training, evaluate on every N-th step with the gradient scaled by N (lazy
            regularization, Karras et al. CVPR 2020); the steps in between cost nothing.
        track_every: run the tracker's Ritz step every N steps; in between, σ_min and σ_max are the
            float64 Rayleigh quotients ‖W v‖ of the cached vectors (upper / lower bounds, error second
            order in the weights' drift), one pass over the weights.
        refresh_every: full float64 decomposition of a tracked layer at least every N steps.
        tolerance: relative eigen-residual at which a tracked σ_min is accepted (else more steps, then
            a refresh); the tracked σ_min² is then within this relative distance of an eigenvalue.
        iterations: tracker projections per step before it falls back to a refresh.
        jitter: eigenvalue floor relative to the mean eigenvalue (keeps gradients finite).
    """

    name = "singular"

    def __init__(self, measure: Literal["ratio", "rms", "logdet"] = "ratio",
                 convention: Literal["paper", "grouped"] = "paper",
                 conv_operator: Literal["reshape", "fft"] = "reshape", layers: str = "",
                 lazy_every: int = 8, track_every: int = 1, refresh_every: int = 100, tolerance: float = 1e-3,
                 iterations: int = 3, jitter: float = 1e-6):
        check_positive("lazy_every", lazy_every)
        check_positive("track_every", track_every)
        check_positive("refresh_every", refresh_every)
        check_positive("tolerance", tolerance)
        check_positive("iterations", iterations)
        check_positive("jitter", jitter, allow_zero=True)
        if measure not in ("ratio", "rms", "logdet"):
            raise ValueError(f"unknown measure {measure!r}; choose ratio, rms or logdet")
        self.measure, self.convention, self.conv_operator = measure, convention, conv_operator
        self.layers, self.refresh_every, self.tolerance = layers, refresh_every, tolerance
        self.iterations, self.jitter, self.track_every = iterations, jitter, track_every
        self.lazy_every = lazy_every
        self._input_sizes: dict[int, tuple[int, int]] = {}  # id(conv) -> (H, W) seen in forward
        self._hooks: list = []
        self._trackers: dict[tuple[str, int], SingularTracker] = {}  # (layer, stack) -> warm state
        self.extremes: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}  # last (σ_min, σ_max), float64

    def state_dict(self) -> dict:
        """The warm trackers per (layer, stack): saved with every training state, so a resume is exact."""
        return {"trackers": {key: tracker.state_dict() for key, tracker in self._trackers.items()}}

    def load_state_dict(self, state: dict) -> None:
        trackers = {}
        for key, saved in state["trackers"].items():
            trackers[tuple(key)] = SingularTracker(self.tolerance, self.iterations, self.refresh_every,
                                                   self.track_every)
            trackers[tuple(key)].load_state_dict(saved)
        self._trackers = trackers

    def setup(self, model: nn.Module) -> nn.Module:
        if self.conv_operator == "fft":
            for layer in select_layers(model, self.layers):
                if fft_eligible(layer.module):
                    self._hooks.append(layer.module.register_forward_pre_hook(self._record_size))
        return model

    def _record_size(self, module: nn.Module, inputs: tuple) -> None:
        self._input_sizes[id(module)] = tuple(inputs[0].shape[-2:])

    def stacks(self, layer: WeightLayer) -> list[Tensor]:
        """The matrices this penalty sees for ``layer``: a reshaped kernel ``(m, n)`` (a view of the weight),
        a stack of group blocks ``(G, m, n)``, or the per-frequency operators of an FFT conv."""
        if self.conv_operator == "fft" and fft_eligible(layer.module):
            size = self._input_sizes.get(id(layer.module))
            if size is None:
                raise ValueError(f"conv_operator='fft' needs the input size of {layer.name!r}: call "
                                 "reg.setup(model) before training and run a forward pass first")
            return [conv_operator_stack(layer.module, size)]
        return layer_stacks(layer, self.convention)

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        return lazy_term(self, self.lazy_every, lambda scale: self._penalty(model, outputs, scale))

    def _penalty(self, model: nn.Module, outputs: Tensor, scale: float = 1.0) -> Tensor:
        """Mean over the selected matrices, gradient × ``scale``; the single real matrices go through their
        trackers in one autograd node (on a model of linear layers, the only node)."""
        with full_precision(outputs):
            stacks = [((layer.name, position), upcast(stack)) for layer in select_layers(model, self.layers)
                      for position, stack in enumerate(self.stacks(layer))]
            tracked = [(key, stack) for key, stack in stacks if self._trackable(stack)]
            if not stacks:
                return zero_like(outputs)
            if len(tracked) == len(stacks):  # mean and lazy factor folded into the node
                return self._tracked_sum(tracked, 1 / len(stacks), scale / len(stacks))
            terms = [self._term(stack, key) for key, stack in stacks if not self._trackable(stack)]
            if tracked:
                terms.append(self._tracked_sum(tracked))
        return scale_gradient(torch.stack(terms).sum() / len(stacks), scale)

    def _trackable(self, stack: Tensor) -> bool:
        return self.measure != "logdet" and stack.dim() == 2

    def _tracked_sum(self, items: list[tuple[tuple[str, int], Tensor]], weight: float = 1.0,
                     grad_weight: float = 1.0) -> Tensor:
        """``weight`` · Σ of the tracked penalties of single real matrices ``(m, n)``, its gradient weighted by
        ``grad_weight`` instead; records their (σ_min, σ_max)."""
        trackers = []
        for key, _ in items:
            if key not in self._trackers:
                self._trackers[key] = SingularTracker(self.tolerance, self.iterations, self.refresh_every,
                                                      self.track_every)
            trackers.append(self._trackers[key])
        total, sigmas = tracked_isotropy_sum([matrix for _, matrix in items], trackers, self.measure == "rms",
                                             self.jitter, weight, grad_weight)
        self.extremes.update(zip([key for key, _ in items], sigmas))
        return total

    def _term(self, stack: Tensor, key: tuple[str, int]) -> Tensor:
        """The penalty of a stack ``(B, m, n)`` (the union of its singular values), or ``logdet`` of one
        matrix ``(m, n)``."""
        stack = stack if stack.dim() == 3 else stack.unsqueeze(0)
        if self.measure == "logdet":
            return logdet_isotropy(stack, self.jitter)
        sigma = torch.linalg.svdvals(stack.to(torch.complex128 if stack.is_complex() else torch.float64))
        self.extremes[key] = (sigma.min().detach(), sigma.max().detach())  # sigma (B, k)
        return isotropy_from_eigenvalues(sigma.square(), self.measure, self.jitter).to(stack.real.dtype)
