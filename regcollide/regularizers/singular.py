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

Everything works on the Gram matrix of the *smaller* side, k × k with k = min(out, in), through
``torch.linalg.eigvalsh`` or ``torch.linalg.cholesky``; no full SVD is taken per step.

Wide layers (out < in). Their row Gram ``W Wᵀ`` (out × out) holds the ``out`` non-zero singular values,
so the penalty acts on the row space: it keeps the rows linearly independent (rank = out), i.e. it keeps
the nullity at its structural value in − out and removes the *excess* nullity training may create. It
cannot shrink the structural kernel: in − out input directions still map to zero, and the collisions they
allow (Ozbulak et al.'s Null-space search on a wide first layer) remain. Only a change of architecture
(out ≥ in) removes those.

Convolutions. By default a conv contributes its reshaped kernel, the paper convention of DESIGN.md (or per
group blocks with ``convention="grouped"``). With ``conv_operator="fft"`` each stride-1, dilation-1 Conv2d
is instead treated as the linear operator it applies to its whole input: following Sedghi, Gupta & Long,
"The Singular Values of Convolutional Layers" (ICLR 2019), the singular values of the circular convolution
on an H × W input are the union, over the H·W frequencies, of the singular values of the out × in matrices
of the 2-D DFT of the kernel. The input size is recorded by a hook installed in ``setup``. For zero-padded
convs this circular operator is an approximation of the true one. Other convs keep the reshaped kernel.

Cost control. With ``refresh_every = N > 1`` (``ratio`` and ``rms``) an expensive layer, one whose
eigendecomposition costs at least that of a ``refresh_min_dim``-square matrix, is decomposed only every N
steps (without gradient). In between, its extreme eigenvalues are the Rayleigh quotients ‖Aᴴv‖² of the
cached extreme eigenvectors v: O(out·in) per step, exact at refresh steps (value and gradient, for simple
eigenvalues), and an upper (for σ_min) / lower (for σ_max) estimate while the weights drift.

Example::

    reg = build_regularizer("singular", measure="ratio")
    loss = F.cross_entropy(outputs, batch["label"]) + 0.1 * reg(model, batch, outputs)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from regcollide.audit.matrices import WeightLayer
from regcollide.regularizers.base import Regularizer, check_positive, full_precision, upcast, zero_like
from regcollide.regularizers.selection import layer_stacks, select_layers, smaller_gram


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
        refresh_every: decompose expensive layers every N steps, Rayleigh quotients in between.
        refresh_min_dim: a layer is expensive when (blocks · k³) ≥ refresh_min_dim³.
        jitter: eigenvalue floor relative to the mean eigenvalue (keeps gradients finite).
    """

    name = "singular"

    def __init__(self, measure: Literal["ratio", "rms", "logdet"] = "ratio",
                 convention: Literal["paper", "grouped"] = "paper",
                 conv_operator: Literal["reshape", "fft"] = "reshape", layers: str = "",
                 refresh_every: int = 1, refresh_min_dim: int = 256, jitter: float = 1e-6):
        check_positive("refresh_every", refresh_every)
        check_positive("refresh_min_dim", refresh_min_dim)
        check_positive("jitter", jitter, allow_zero=True)
        if refresh_every > 1 and measure == "logdet":
            raise ValueError("refresh_every > 1 needs measure 'ratio' or 'rms' (Rayleigh quotients track "
                             "extreme eigenvalues only); logdet's Cholesky is already the cheap path")
        self.measure, self.convention, self.conv_operator = measure, convention, conv_operator
        self.layers, self.refresh_every, self.refresh_min_dim = layers, refresh_every, refresh_min_dim
        self.jitter = jitter
        self._step = 0
        self._input_sizes: dict[int, tuple[int, int]] = {}  # id(conv) -> (H, W) seen in forward
        self._hooks: list = []
        self._vectors: dict[tuple[str, int], tuple] = {}  # (layer, stack) -> cached extreme eigenvectors

    def setup(self, model: nn.Module) -> nn.Module:
        if self.conv_operator == "fft":
            for layer in select_layers(model, self.layers):
                if fft_eligible(layer.module):
                    self._hooks.append(layer.module.register_forward_pre_hook(self._record_size))
        return model

    def _record_size(self, module: nn.Module, inputs: tuple) -> None:
        self._input_sizes[id(module)] = tuple(inputs[0].shape[-2:])

    def stacks(self, layer: WeightLayer) -> list[Tensor]:
        """The matrices this penalty sees for ``layer``: reshaped kernels or per-frequency operators."""
        if self.conv_operator == "fft" and fft_eligible(layer.module):
            size = self._input_sizes.get(id(layer.module))
            if size is None:
                raise ValueError(f"conv_operator='fft' needs the input size of {layer.name!r}: call "
                                 "reg.setup(model) before training and run a forward pass first")
            return [conv_operator_stack(layer.module, size)]
        return layer_stacks(layer, self.convention)

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        refresh = self._step % self.refresh_every == 0
        if torch.is_grad_enabled():
            self._step += 1
        with full_precision(outputs):
            return self._penalty(model, outputs, refresh)

    def _penalty(self, model: nn.Module, outputs: Tensor, refresh: bool) -> Tensor:
        terms = []
        for layer in select_layers(model, self.layers):
            for position, stack in enumerate(self.stacks(layer)):
                stack = upcast(stack)
                key = (layer.name, position)
                if self.refresh_every > 1 and self._expensive(stack):
                    terms.append(self._rayleigh_penalty(stack, key, refresh or key not in self._vectors))
                elif self.measure == "logdet":
                    terms.append(logdet_isotropy(stack, self.jitter))
                else:
                    gram, _ = smaller_gram(stack)
                    terms.append(isotropy_from_eigenvalues(torch.linalg.eigvalsh(gram), self.measure,
                                                           self.jitter))
        return torch.stack(terms).mean() if terms else zero_like(outputs)

    def _expensive(self, stack: Tensor) -> bool:
        k = min(stack.shape[-2:])
        return stack.shape[0] * k**3 >= self.refresh_min_dim**3

    def _rayleigh_penalty(self, stack: Tensor, key: tuple[str, int], refresh: bool) -> Tensor:
        if refresh:
            with torch.no_grad():
                gram, row_side = smaller_gram(stack)
                lam, vectors = torch.linalg.eigh(gram)  # (B, k), (B, k, k) ascending
                low_block, high_block = int(lam[:, 0].argmin()), int(lam[:, -1].argmax())
                self._vectors[key] = (row_side, low_block, vectors[low_block, :, 0].clone(),
                                      high_block, vectors[high_block, :, -1].clone())
        row_side, low_block, low_vec, high_block, high_vec = self._vectors[key]

        def rayleigh(block: int, vector: Tensor) -> Tensor:  # vᴴ G v = ‖Aᴴ v‖² (row Gram) or ‖A v‖²
            matrix = stack.squeeze(0) if stack.shape[0] == 1 else stack[block]  # (m, n); a view when B = 1
            return squared_norm(matrix.mH @ vector if row_side else matrix @ vector)

        k = min(stack.shape[-2:])
        mean = squared_norm(stack) / (stack.shape[0] * k)
        floor = self.jitter * mean
        low = rayleigh(low_block, low_vec) + floor
        high = rayleigh(high_block, high_vec) if self.measure == "ratio" else mean
        return 1 - torch.sqrt(low / (high + floor))
