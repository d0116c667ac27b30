"""The vertex search of the polytope method: K colliding inputs around one target, as one batch.

Li, Zhang & Malik, "Approximate Feature Collisions in Neural Nets", NeurIPS 2019.

At a ReLU layer with pre-activation z(u), every unit with z_i(u) <= 0 outputs 0. For a target x_t with
t = z(x_t), A = {i : t_i > 0} (active) and I = {i : t_i <= 0} (inactive), every input u with
z_A(u) = t_A and z_I(u) <= 0 has exactly the target's features relu(t), hence its prediction. For a
linear first layer that set is a convex polytope. Each of its K vertices is found by pushing one
chosen inactive unit i as negative as possible while keeping the rest of the features:

    minimize over u in [0, 1]^(C x H x W):   L+(u) + beta * L_i(u)
    L+(u)  = ||z_A(u) - t_A||^2 / s^2
    L_i(u) = z_i(u) / s + rho * sum_{j in I, j != i} g(z_j(u)) / s
    g = |.|  ("li2019": the other inactive units are held near zero, the original form; rho = 1)
    g = max(., 0)  ("hinge": they only have to stay <= 0, which allows larger polytopes; rho = 10)

where s = ||relu(t)||, so beta and the losses do not depend on the layer's scale. The hold weight rho
(``hold``) differs by form: the absolute value also pulls up units that are far below zero, which fights
L+, so li2019 keeps the paper's equal weights; the hinge is silent below zero, so it can hold violations
firmly (rho = 10 keeps the inactive units of an MNIST MLP exactly <= 0). All K vertices are optimized
as one batch with Adam and a cosine learning-rate decay to 1% of ``lr``; after every step the iterate
is projected back onto [0, 1], so the box constraint holds exactly. The K units are drawn uniformly at
random (seeded) among the inactive units: random units give an unbiased picture of the polytope,
where the most negative units would favour directions the target already points away from.

``regcollide.attacks.polytope.evaluate.evaluate_polytope`` samples the polytope and measures it.

Example::

    search = PolytopeSearch(model, layer="1", vertices=5)
    out = search.search(x_t)                  # x_t (C, H, W) in [0, 1]
    out.vertices                              # (5, C, H, W) in [0, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from regcollide._modes import eval_mode
from regcollide.attacks.polytope.hooks import capture_preactivation, resolve_layer, run_to_layer

LOSSES = ("li2019", "hinge")
DEFAULT_HOLD = {"li2019": 1.0, "hinge": 10.0}
INITS = ("target", "other")


@dataclass
class PolytopeOutput:
    """The vertices found for one target, with what was measured on them."""

    layer: str
    target: Tensor  # (C, H, W)
    vertices: Tensor  # (K, C, H, W), in [0, 1]
    units: Tensor  # (K,) the inactive unit pushed down at each vertex (index into the flattened layer)
    target_features: Tensor  # (D,) t = z(x_t), the pre-activation of the target
    vertex_residuals: Tensor  # (K,) ||relu(z(v)) - relu(t)|| / ||relu(t)||
    unit_values: Tensor  # (K,) z_i(v) / ||relu(t)|| at the vertex of unit i (negative is good)
    active_units: int
    steps: int
    final_loss: float
    target_label: int | None = None


class PolytopeSearch:
    """Find K vertices of a polytope of inputs colliding with a target at a ReLU layer (Li et al. 2019).

    Args:
        model: classifier taking images in [0, 1]; not modified (a forward hook reads the layer).
        layer: name of a module whose output feeds a ReLU (``None``: the first one in forward order).
        vertices: K, the number of vertices (one per chosen inactive unit).
        loss: ``"li2019"`` (absolute-value hold of the other inactive units) or ``"hinge"``.
        beta: weight of L_i against L+ (both in units of ||relu(t)||, see the module docstring).
        hold: rho, the weight of the other inactive units inside L_i (``None``: 1 for li2019, 10 for hinge).
        steps: Adam steps; lr: initial learning rate, decayed to 1% of it with a cosine schedule.
        init: ``"target"`` starts every vertex at the target; ``"other"`` at ``init_image`` (an example of
            another class), as in the two experiments of Li et al.'s Table 1.
        seed: seeds the choice of units. progress: show a tqdm bar.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        vertices: int = 5,
        loss: str = "hinge",
        beta: float = 0.001,
        hold: float | None = None,
        steps: int = 2000,
        lr: float = 0.03,
        init: str = "target",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown polytope loss {loss!r}; choose one of: {', '.join(LOSSES)}")
        if init not in INITS:
            raise ValueError(f"unknown polytope init {init!r}; choose one of: {', '.join(INITS)}")
        if vertices < 2:
            raise ValueError(f"a polytope needs at least 2 vertices, got vertices={vertices}")
        hold = DEFAULT_HOLD[loss] if hold is None else hold
        if steps < 1 or lr <= 0 or beta < 0 or hold < 0:
            raise ValueError(f"need steps >= 1, lr > 0, beta >= 0, hold >= 0 (got {steps}, {lr}, {beta}, {hold})")
        self.model, self.layer, self.vertices, self.loss = model, layer, vertices, loss
        self.hold, self._layer_checked = hold, False
        self.beta, self.steps, self.lr, self.init = beta, steps, lr, init
        self.seed, self.progress = seed, progress

    def resolve_layer(self, example: Tensor) -> str:
        """Validate (or choose) the layer with one forward pass of ``example`` (B, C, H, W)."""
        self.layer = resolve_layer(self.model, self.layer, example)
        self._layer_checked = True
        return self.layer

    def features(self, x: Tensor) -> Tensor:
        """Pre-activations z(x) of the layer, ``(B, D)``, without running the rest of the model."""
        with capture_preactivation(self.model, self.layer, stop=True) as store:
            return run_to_layer(self.model, store, x)

    def search(
        self, target: Tensor, init_image: Tensor | None = None, target_label: int | None = None
    ) -> PolytopeOutput:
        """Optimize the K vertices for ``target`` (C, H, W) in [0, 1]; see the class docstring.

        ``init_image`` (C, H, W) is the start for ``init="other"``; ``target_label`` is only recorded.
        """
        if self.init == "other" and init_image is None:
            raise ValueError("init='other' needs init_image: an example of another class (C, H, W)")
        with eval_mode(self.model):
            if not self._layer_checked:
                self.resolve_layer(target[None])
            out = self._search(target, init_image if self.init == "other" else target)
            out.target_label = target_label
            return out

    def _search(self, target: Tensor, start: Tensor) -> PolytopeOutput:
        with torch.no_grad():
            t = self.features(target[None])[0]  # (D,)
        active = t > 0
        inactive_idx = torch.nonzero(~active).flatten()
        if len(inactive_idx) < self.vertices:
            raise ValueError(
                f"layer {self.layer!r} has {len(inactive_idx)} inactive units at this target, fewer than "
                f"vertices={self.vertices}; use fewer vertices or another layer"
            )
        scale = t.clamp_min(0).norm().clamp_min(1e-12)
        generator = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(len(inactive_idx), generator=generator)[: self.vertices]
        units = inactive_idx[pick].to(t.device)  # (K,)
        rows = torch.arange(self.vertices, device=t.device)
        # Each vertex holds all inactive units except its own one.
        others = (~active).expand(self.vertices, -1).clone()  # (K, D)
        others[rows, units] = False

        u = start.detach().clone().expand(self.vertices, *start.shape).contiguous()  # (K, C, H, W)
        u.requires_grad_(True)
        optimizer = torch.optim.Adam([u], lr=self.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / self.steps))
        )
        hold = torch.abs if self.loss == "li2019" else torch.relu
        loss = torch.zeros(())
        with capture_preactivation(self.model, self.layer, stop=True) as store:
            bar = tqdm(range(self.steps), desc="polytope vertices", disable=not self.progress, leave=False)
            for _ in bar:
                z = run_to_layer(self.model, store, u) / scale  # (K, D)
                keep = ((z - t / scale) ** 2 * active).sum(1)  # L+, (K,)
                push = z[rows, units] + self.hold * (hold(z) * others).sum(1)  # L_i, (K,)
                loss = (keep + self.beta * push).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    u.clamp_(0.0, 1.0)  # projection: the box constraint holds exactly
        vertices = u.detach()
        with torch.no_grad():
            z = self.features(vertices)  # (K, D)
            residuals = (z.clamp_min(0) - t.clamp_min(0)).norm(dim=1) / scale
        return PolytopeOutput(
            layer=self.layer,
            target=target.detach(),
            vertices=vertices,
            units=units,
            target_features=t,
            vertex_residuals=residuals,
            unit_values=z[rows, units] / scale,
            active_units=int(active.sum()),
            steps=self.steps,
            final_loss=float(loss.detach()),
        )
