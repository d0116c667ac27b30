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
as one batch with Adam at a constant learning rate; after every step the iterate is projected back onto
[0, 1], so the box constraint holds exactly. Several targets are one batch too: (T targets × K vertices)
rows in one optimization, no Python loop over targets.

Stopping rule (what makes the vertex spread a property of the model, not of the step budget): every
``check_every`` steps we measure, per target, the spread (mean pairwise L2 distance of its K vertices) and
the worst vertex feature residual ||relu(z(v)) - relu(t)|| / ||relu(t)||. A target has *converged* when its
spread changed by at most ``plateau`` (relative) over the last ``window`` steps AND its residual is at most
``residual_tol``; its vertices are then frozen. The search ends when every target has converged or after
``steps`` (the budget). Each output records ``converged``, ``steps_used``, the budget and the spread trace;
a target that did not converge is reported as such, never silently at the budget's spread.

The K units are drawn uniformly at random (seeded) among the inactive units: random units give an unbiased
picture of the polytope, where the most negative units would favour directions the target already points
away from. ``unit_order="first"`` instead takes the first K inactive units in index order, which is what the
authors' released code does (it is part of the ``li2019`` setting of :mod:`regcollide.attacks.polytope.presets`).

``regcollide.attacks.polytope.evaluate.evaluate_polytope`` samples the polytope and measures it.

Example::

    search = PolytopeSearch(model, layer="1", vertices=5)
    out = search.search(x_t)                  # x_t (C, H, W) in [0, 1]
    out.vertices, out.converged               # (5, C, H, W) in [0, 1]; True once the spread plateaued
    outs = search.search_batch(x)             # x (T, C, H, W): T targets in one optimization
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from regcollide._modes import eval_mode
from regcollide.attacks.polytope.hooks import capture_preactivation, resolve_layer, run_to_layer

LOSSES = ("li2019", "hinge")
DEFAULT_HOLD = {"li2019": 1.0, "hinge": 10.0}
INITS = ("target", "other")
UNIT_ORDERS = ("random", "first")


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
    steps: int  # the budget (maximum number of Adam steps)
    final_loss: float
    target_label: int | None = None
    converged: bool = False  # the stopping rule held (spread plateaued and residual <= residual_tol)
    steps_used: int = 0  # steps until convergence, or the budget
    spread_trace: list[tuple[int, float]] = field(default_factory=list)  # (step, spread) at every check


@dataclass
class _Problem:
    """The batched problem: T targets × K vertices, rows of the optimization are target-major."""

    t: Tensor  # (T, D) target pre-activations
    active: Tensor  # (T, D) bool
    scale: Tensor  # (T, 1) ||relu(t)||
    units: Tensor  # (T, K) pushed unit per vertex
    others: Tensor  # (T, K, D) bool: the inactive units each vertex holds


class PolytopeSearch:
    """Find K vertices of a polytope of inputs colliding with a target at a ReLU layer (Li et al. 2019).

    Args:
        model: classifier taking images in [0, 1]; not modified (a forward hook reads the layer).
        layer: name of a module whose output feeds a ReLU (``None``: the first one in forward order).
        vertices: K, the number of vertices (one per chosen inactive unit).
        loss: ``"li2019"`` (absolute-value hold of the other inactive units) or ``"hinge"``.
        beta: weight of L_i against L+ (both in units of ||relu(t)||, see the module docstring).
        hold: rho, the weight of the other inactive units inside L_i (``None``: 1 for li2019, 10 for hinge).
        steps: the budget, the most Adam steps per search; lr: the constant Adam learning rate.
        init: ``"target"`` starts every vertex at the target; ``"other"`` at ``init_image`` (an example of
            another class), as in the two experiments of Li et al.'s Table 1.
        unit_order: ``"random"`` draws the K pushed units at random (seeded) among the inactive units;
            ``"first"`` takes the first K inactive units in index order, as the authors' released code does.
        check_every, window, plateau, residual_tol: the stopping rule (module docstring).
        seed: seeds the choice of units (target j of a batch uses ``seed + j``). progress: a tqdm bar.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        vertices: int = 5,
        loss: str = "hinge",
        beta: float = 0.001,
        hold: float | None = None,
        steps: int = 20000,
        lr: float = 0.03,
        init: str = "target",
        seed: int = 0,
        unit_order: str = "random",
        progress: bool = True,
        check_every: int = 250,
        window: int = 1000,
        plateau: float = 0.005,
        residual_tol: float = 0.01,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown polytope loss {loss!r}; choose one of: {', '.join(LOSSES)}")
        if init not in INITS:
            raise ValueError(f"unknown polytope init {init!r}; choose one of: {', '.join(INITS)}")
        if unit_order not in UNIT_ORDERS:
            raise ValueError(f"unknown unit order {unit_order!r}; choose one of: {', '.join(UNIT_ORDERS)}")
        if vertices < 2:
            raise ValueError(f"a polytope needs at least 2 vertices, got vertices={vertices}")
        hold = DEFAULT_HOLD[loss] if hold is None else hold
        numbers = (beta, hold, lr, plateau, residual_tol)
        if not all(math.isfinite(v) for v in numbers) or steps < 1 or lr <= 0 or beta < 0 or hold < 0:
            raise ValueError(f"need finite beta >= 0, hold >= 0, lr > 0 and steps >= 1 (got beta={beta}, "
                             f"hold={hold}, lr={lr}, steps={steps})")
        if check_every < 1 or window < check_every or window % check_every or plateau < 0 or residual_tol <= 0:
            raise ValueError("the stopping rule needs check_every >= 1, window a multiple of check_every, "
                             "plateau >= 0 and residual_tol > 0")
        self.model, self.layer, self.vertices, self.loss = model, layer, vertices, loss
        self.hold, self._layer_checked = hold, False
        self.beta, self.steps, self.lr, self.init = beta, steps, lr, init
        self.seed, self.progress, self.unit_order = seed, progress, unit_order
        self.check_every, self.window, self.plateau, self.residual_tol = check_every, window, plateau, residual_tol

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
        starts = None if init_image is None else init_image[None]
        labels = None if target_label is None else [target_label]
        return self.search_batch(target[None], starts, labels)[0]

    def search_batch(
        self, targets: Tensor, init_images: Tensor | None = None, target_labels: list[int] | None = None
    ) -> list[PolytopeOutput]:
        """All targets (T, C, H, W) in one optimization of T·K rows; one :class:`PolytopeOutput` each.

        ``init_images`` (T, C, H, W) are the starts for ``init="other"``; target j draws its units with
        seed ``seed + j``, so a batch gives each target the units a single search with that seed would.
        """
        if self.init == "other" and init_images is None:
            raise ValueError("init='other' needs init_image: an example of another class (C, H, W)")
        with eval_mode(self.model):
            if not self._layer_checked:
                self.resolve_layer(targets[:1])
            problem = self._problem(targets)
            starts = init_images if self.init == "other" else targets
            u, state = self._optimize(problem, starts)
            outs = self._outputs(problem, targets, u, state)
        for j, out in enumerate(outs):
            out.target_label = None if target_labels is None else int(target_labels[j])
        return outs

    def _problem(self, targets: Tensor) -> _Problem:
        with torch.no_grad():
            t = self.features(targets)  # (T, D)
        active = t > 0
        units = []
        for j, inactive in enumerate(~active):
            idx = torch.nonzero(inactive).flatten()
            if len(idx) < self.vertices:
                raise ValueError(
                    f"layer {self.layer!r} has {len(idx)} inactive units at target {j}, fewer than "
                    f"vertices={self.vertices}; use fewer vertices or another layer")
            if self.unit_order == "first":  # nonzero() lists indices in increasing order
                units.append(idx[: self.vertices])
                continue
            generator = torch.Generator().manual_seed(self.seed + j)
            units.append(idx[torch.randperm(len(idx), generator=generator)[: self.vertices]])
        units = torch.stack(units).to(t.device)  # (T, K)
        # each vertex holds all inactive units except its own one
        others = (~active)[:, None, :].expand(-1, self.vertices, -1).clone()  # (T, K, D)
        others.scatter_(2, units[..., None], False)
        scale = t.clamp_min(0).norm(dim=1, keepdim=True).clamp_min(1e-12)  # (T, 1)
        return _Problem(t=t, active=active, scale=scale, units=units, others=others)

    def _losses(self, problem: _Problem, z: Tensor) -> Tensor:
        """Per-row loss (T, K) for pre-activations z (T, K, D) already divided by the scale."""
        target = (problem.t / problem.scale)[:, None, :]  # (T, 1, D)
        keep = ((z - target) ** 2 * problem.active[:, None, :]).sum(2)  # L+, (T, K)
        hold = torch.abs if self.loss == "li2019" else torch.relu
        own = z.gather(2, problem.units[..., None])[..., 0]  # z_i at each vertex, (T, K)
        push = own + self.hold * (hold(z) * problem.others).sum(2)  # L_i, (T, K)
        return keep + self.beta * push

    def _optimize(self, problem: _Problem, starts: Tensor) -> tuple[Tensor, dict]:
        n_targets, k = problem.units.shape
        shape = starts.shape[1:]
        u = starts.detach()[:, None].expand(-1, k, *shape).reshape(n_targets * k, *shape).clone()
        u.requires_grad_(True)
        optimizer = torch.optim.Adam([u], lr=self.lr)
        state = {"converged": torch.zeros(n_targets, dtype=torch.bool), "steps_used": [self.steps] * n_targets,
                 "trace": [[] for _ in range(n_targets)], "loss": torch.zeros(())}
        frozen = u.detach().clone()
        with capture_preactivation(self.model, self.layer, stop=True) as store:
            bar = tqdm(range(1, self.steps + 1), desc="polytope vertices", disable=not self.progress, leave=False)
            for step in bar:
                z = run_to_layer(self.model, store, u).reshape(n_targets, k, -1) / problem.scale[:, None]
                loss = self._losses(problem, z).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    u.clamp_(0.0, 1.0)  # projection: the box constraint holds exactly
                    done = state["converged"].repeat_interleave(k).to(u.device)
                    u[done] = frozen[done]  # converged targets keep their vertices
                state["loss"] = loss.detach()
                if step % self.check_every == 0 or step == self.steps:
                    if self._check(problem, u.detach(), step, state, frozen):
                        break
        return u.detach(), state

    def _check(self, problem: _Problem, u: Tensor, step: int, state: dict, frozen: Tensor) -> bool:
        """Apply the stopping rule at ``step``; freeze targets that converged. True when all have."""
        n_targets, k = problem.units.shape
        with torch.no_grad():
            residual = self._residuals(problem, u).amax(1)  # (T,)
            flat = u.reshape(n_targets, k, -1).double()  # (T, K, D)
            spread = torch.cdist(flat, flat).sum((1, 2)) / (k * (k - 1))  # mean pairwise distance, (T,)
        back = self.window // self.check_every
        for j in range(n_targets):
            if state["converged"][j]:
                continue
            trace = state["trace"][j]
            trace.append((step, float(spread[j])))
            if len(trace) <= back:
                continue
            before = trace[-1 - back][1]
            flat_spread = abs(trace[-1][1] - before) <= self.plateau * max(trace[-1][1], 1e-12)
            if flat_spread and float(residual[j]) <= self.residual_tol:
                state["converged"][j] = True
                state["steps_used"][j] = step
                frozen[j * k:(j + 1) * k] = u[j * k:(j + 1) * k]
        return bool(state["converged"].all())

    def _residuals(self, problem: _Problem, u: Tensor) -> Tensor:
        """(T, K) ||relu(z(v)) - relu(t)|| / ||relu(t)|| of every vertex."""
        n_targets, k = problem.units.shape
        z = self.features(u).reshape(n_targets, k, -1)
        return (z.clamp_min(0) - problem.t.clamp_min(0)[:, None]).norm(dim=2) / problem.scale

    def _outputs(self, problem: _Problem, targets: Tensor, u: Tensor, state: dict) -> list[PolytopeOutput]:
        n_targets, k = problem.units.shape
        with torch.no_grad():
            z = self.features(u).reshape(n_targets, k, -1)
            residuals = (z.clamp_min(0) - problem.t.clamp_min(0)[:, None]).norm(dim=2) / problem.scale  # (T, K)
            own = z.gather(2, problem.units[..., None])[..., 0] / problem.scale  # (T, K)
        vertices = u.reshape(n_targets, k, *u.shape[1:])
        return [PolytopeOutput(
            layer=self.layer, target=targets[j].detach(), vertices=vertices[j], units=problem.units[j],
            target_features=problem.t[j], vertex_residuals=residuals[j], unit_values=own[j],
            active_units=int(problem.active[j].sum()), steps=self.steps, final_loss=float(state["loss"]),
            converged=bool(state["converged"][j]), steps_used=int(state["steps_used"][j]),
            spread_trace=state["trace"][j]) for j in range(n_targets)]
