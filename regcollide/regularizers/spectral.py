"""Spectral normalization baseline: every selected layer's weight divided by its largest singular value.

Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for Generative Adversarial Networks" (ICLR
2018), via ``torch.nn.utils.parametrizations.spectral_norm``: ``setup`` registers the parametrization
(power iteration on the reshaped kernel, i.e. the paper-convention matrix, not the conv operator), and
the per-step term is 0. It bounds σ_max only; it does nothing for σ_min, so it is the baseline showing that
controlling the Lipschitz constant alone does not prevent nullity.

The parametrization renames the weight in ``state_dict`` (``parametrizations.weight.original``), so call
``finalize(model)`` before saving: it bakes the normalized weight back into a plain ``weight`` so the run
folder loads into an unwrapped model.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from regcollide.regularizers.base import Regularizer, check_positive, zero_like
from regcollide.regularizers.selection import select_layers

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
              nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class SpectralNormalization(Regularizer):
    """Wrap Linear/Conv/ConvTranspose layers with spectral normalization; the loss term is 0.

    Args:
        n_power_iterations: power-iteration steps per forward pass (PyTorch's default is 1).
        layers: regex on layer names; empty selects all Linear and conv layers
            (MultiheadAttention in-projections are not plain ``weight`` parameters and are skipped).
    """

    name = "spectral"

    def __init__(self, n_power_iterations: int = 1, layers: str = ""):
        check_positive("n_power_iterations", n_power_iterations)
        self.n_power_iterations, self.layers = n_power_iterations, layers

    def setup(self, model: nn.Module) -> nn.Module:
        for layer in select_layers(model, self.layers):
            module = layer.module
            if isinstance(module, _SUPPORTED) and not parametrize.is_parametrized(module, "weight"):
                # ConvTranspose keeps out-channels in dim 1 of its weight.
                dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
                spectral_norm(module, n_power_iterations=self.n_power_iterations, dim=dim)
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if isinstance(module, _SUPPORTED) and parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return model

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], outputs: Tensor) -> Tensor:
        return zero_like(outputs)
