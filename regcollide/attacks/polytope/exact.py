"""Exact polytope vertices by linear programming, when the polytope layer is a Linear first layer.

Li, Zhang & Malik ("Approximate Feature Collisions in Neural Nets", NeurIPS 2019) find vertices with a
penalized loss. When the layer is the first weight layer and a Linear map of the pixels (after a per-pixel
affine step such as a normalization), the polytope is exactly

    P = {x ∈ [0, 1]^D : z_A(x) = t_A,  z_j(x) <= 0 for every other inactive unit j},   z(x) = W'x + c,

and the vertex for unit i is the solution of the linear program  min z_i(x)  over P. This is the ground
truth that the penalized search approximates: a reference for its distance ratio, and the way to tell a
polytope that is really a single point (the box pins it) from a search that did not move.

``exact_vertices`` returns ``None`` when the layer is not such a Linear first layer.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linprog
from torch import Tensor, nn

from regcollide._tracing import first_weight_layer
from regcollide.attacks.nullspace.basis import NullspaceError, probe_input_map


def affine_first_layer(model: nn.Module, layer: str, input_shape: tuple[int, int, int]
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """(W' (out, D), c (out,)) with z(x) = W'·x + c for images x, or None if ``layer`` is not that map."""
    module = model.get_submodule(layer)
    first, _ = first_weight_layer(model, input_shape)
    if not isinstance(module, nn.Linear) or first.module is not module:
        return None
    try:
        a, b, u_shape = probe_input_map(model, module, input_shape)  # u = a ⊙ x + b, (C, H, W) each
    except NullspaceError:
        return None
    if int(np.prod(u_shape)) != module.in_features:
        return None  # the Linear sees rows of the image, not the whole image
    weight = module.weight.detach().double().cpu()  # (out, D)
    bias = module.bias.detach().double().cpu() if module.bias is not None else torch.zeros(weight.shape[0])
    folded = weight * a.flatten().cpu()  # W·diag(a)
    return folded.numpy(), (weight @ b.flatten().cpu() + bias).numpy()


def exact_vertices(model: nn.Module, layer: str, target: Tensor, units: Tensor) -> Tensor | None:
    """The exact vertex (K, C, H, W) for each pushed unit in ``units`` (K,), for ``target`` (C, H, W).

    None when the layer is not a Linear first layer. Solved with HiGHS; a program that fails (it should
    not: the target itself is feasible) gives the target as its vertex.
    """
    maps = affine_first_layer(model, layer, tuple(target.shape))
    if maps is None:
        return None
    weight, offset = maps
    x_t = target.detach().double().cpu().flatten().numpy()
    t = weight @ x_t + offset  # (out,)
    active, inactive = t > 0, t <= 0
    vertices = []
    for unit in units.tolist():
        others = inactive.copy()
        others[unit] = False
        result = linprog(weight[unit], A_eq=weight[active], b_eq=t[active] - offset[active],
                         A_ub=weight[others], b_ub=-offset[others], bounds=(0.0, 1.0), method="highs")
        vertices.append(result.x if result.status == 0 else x_t)
    stacked = torch.as_tensor(np.stack(vertices), dtype=target.dtype, device=target.device)
    return stacked.reshape(len(vertices), *target.shape)
