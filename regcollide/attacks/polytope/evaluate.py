"""Polytope search evaluator: how large a region of very different inputs collides with one example.

Li, Zhang & Malik, "Approximate Feature Collisions in Neural Nets", NeurIPS 2019. The vertices come from
:class:`~regcollide.attacks.polytope.search.PolytopeSearch` (the losses are documented there); this file
samples the polytope and measures it as in the paper's Tables 2 and 4:

- ``success_rate``: share of N Dirichlet(1) convex combinations of the vertices classified like the
  target (like the model's prediction on the target, which is what a collision preserves);
- ``mean_top_prob``: mean top-class softmax probability of those samples;
- ``vertex_distance`` / ``data_distance`` = ``distance_ratio``: mean pairwise L2 distance between the
  vertices against the mean L2 distance between random pairs of dataset images (seeded, >= 1000 pairs);
- ``max_rel_feature_residual``: max over samples of ||relu(z(u)) - relu(t)|| / ||relu(t)||.

Control, in the spirit of the paper's random-ball check: N points uniform on the sphere around the vertex
centroid c with radius r = mean_k ||v_k - c|| (the mean vertex spread). The sphere leaves [0, 1] almost
everywhere, so the points are projected (clipped) onto [0, 1], where the model is defined and where the
polytope samples live; ``ball_clipped_fraction`` says how many needed it and ``ball_success_rate_unclipped``
gives the raw sphere's rate. A polytope that is no better than this ball is not a finding: a target whose
samples' worst feature residual is not below the control's mean residual is reported as **failed** (not a
collision), and is left out of ``distance_ratio``, as are targets whose search did not converge (the
stopping rule of :mod:`regcollide.attacks.polytope.search`). ``distance_ratio_all`` keeps every target;
``converged``, ``steps_used`` and the budget ``steps`` are recorded, and flags say what went wrong.

Example::

    result = evaluate_polytope(model, images, labels, targets=4)   # images (N, C, H, W) in [0, 1]
    result.to_dict()["success_rate"], result.to_dict()["ball_success_rate"]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from regcollide._modes import eval_mode
from regcollide.attacks.checks import Flag, check_batch
from regcollide.attacks.polytope.exact import exact_vertices
from regcollide.attacks.polytope.metrics import (
    SAMPLER,
    convex_samples,
    data_distance,
    dirichlet_weights,
    mean_pairwise_distance,
    predict_with_features,
    relative_residuals,
    sphere_points,
)
from regcollide.attacks.polytope.search import INITS, PolytopeOutput, PolytopeSearch

__all__ = ["PolytopeOutput", "PolytopeResult", "PolytopeSearch", "evaluate_polytope"]

EXAMPLE_SAMPLES = 4  # interpolated samples kept per target for the picture
NOT_CONVERGED = "polytope_not_converged"
FAILED = "polytope_failed"


@dataclass
class PolytopeResult:
    """Aggregate over targets (means; the residual is a max) plus one dict per target."""

    layer: str
    vertices: int
    samples: int
    success_rate: float
    mean_top_prob: float
    vertex_distance: float | None  # over the valid (converged, not failed) targets; None if there are none
    data_distance: float
    distance_ratio: float | None
    max_rel_feature_residual: float
    settings: dict
    extras: dict
    per_target: list[dict]
    examples: list[dict] = field(default_factory=list, repr=False)  # tensors for the picture
    flags: list[Flag] = field(default_factory=list)

    def to_dict(self) -> dict:
        keys = ("layer", "vertices", "samples", "success_rate", "mean_top_prob", "vertex_distance",
                "data_distance", "distance_ratio", "max_rel_feature_residual")
        return ({k: getattr(self, k) for k in keys} | self.settings | self.extras
                | {"per_target": self.per_target, "flags": [flag.to_dict() for flag in self.flags]})


def evaluate_polytope(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    layer: str | None = None,
    vertices: int = 5,
    samples: int = 2000,
    loss: str = "hinge",
    init: str = "target",
    targets: int = 4,
    data_images: Tensor | None = None,
    data_pairs: int = 2000,
    beta: float = 0.001,
    hold: float | None = None,
    steps: int = 20000,
    lr: float = 0.03,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
    exact_reference: bool = False,
    unit_order: str = "random",
    **stopping,
) -> PolytopeResult:
    """Polytope search on the first ``targets`` of ``images`` (N, C, H, W) in [0, 1], labels (N,).

    The other images are the pool for ``init="other"`` (a seeded random image with another label) and,
    unless ``data_images`` is given, for ``data_distance``. The vertex-search settings are those of
    :class:`PolytopeSearch` (``steps`` is the budget, ``unit_order`` how the pushed units are chosen;
    ``stopping`` takes ``check_every``, ``window``, ``plateau``, ``residual_tol``); all targets are optimized
    as one batch. Every random draw comes from
    generators seeded with ``seed``. ``exact_reference`` adds the exact polytope's vertex spread (linear
    programs, :mod:`~regcollide.attacks.polytope.exact`) when the layer is a Linear first layer.
    """
    check_batch(images, labels)  # finite, in [0, 1]: the evaluator contract
    if init not in INITS:
        raise ValueError(f"unknown polytope init {init!r}; choose one of: {', '.join(INITS)}")
    if len(images) == 0 or targets < 1 or samples < 1:
        raise ValueError("evaluate_polytope needs at least one image, targets >= 1 and samples >= 1")
    n_targets = min(targets, len(images))
    pool = images if data_images is None else data_images
    gen = torch.Generator().manual_seed(seed)
    data_dist, pairs_used = data_distance(pool, data_pairs, gen)
    search = PolytopeSearch(model, layer=layer, vertices=vertices, loss=loss, beta=beta, hold=hold, steps=steps,
                            lr=lr, init=init, seed=seed, progress=progress, unit_order=unit_order, **stopping)
    others = [_pick_other(labels, j, gen) for j in range(n_targets)] if init == "other" else None
    with eval_mode(model):
        outs = search.search_batch(images[:n_targets], None if others is None else images[others],
                                   [int(v) for v in labels[:n_targets]])
        rows = [_measure(model, out, samples, gen, batch_size) | {"index": j, "init_index": None if others is None
                                                                   else others[j]} for j, out in enumerate(outs)]
    if exact_reference:
        _add_exact_reference(model, outs, rows)
    per_target = [{k: v for k, v in row.items() if k != "example"} for row in rows]
    mean = lambda key, rs=per_target: sum(r[key] for r in rs) / len(rs) if rs else float("nan")  # noqa: E731
    valid = [r for r in per_target if r["converged"] and not r["failed"]]
    settings = {"sampler": SAMPLER, "loss": loss, "init": init, "beta": beta, "hold": search.hold,
                "steps": steps, "lr": lr, "seed": seed, "targets": n_targets, "data_pairs": pairs_used,
                "unit_order": unit_order,
                "success_reference": "model prediction on the target",
                "stopping_rule": {"check_every": search.check_every, "window": search.window,
                                  "plateau": search.plateau, "residual_tol": search.residual_tol}}
    extras = {key: mean(key) for key in ("mean_rel_feature_residual", "vertex_success_rate", "ball_success_rate",
                                         "ball_success_rate_unclipped", "ball_radius", "ball_clipped_fraction",
                                         "ball_mean_rel_feature_residual", "active_units")}
    extras |= {"converged": all(r["converged"] for r in per_target),
               "converged_targets": sum(r["converged"] for r in per_target),
               "failed_targets": sum(r["failed"] for r in per_target), "valid_targets": len(valid),
               "steps_used": max(r["steps_used"] for r in per_target),
               "distance_ratio_all": mean("vertex_distance") / data_dist}
    if exact_reference:
        exact = [r["exact_vertex_distance"] for r in per_target]
        extras["exact_distance_ratio"] = None if None in exact else sum(exact) / len(exact) / data_dist
    return PolytopeResult(
        layer=search.layer, vertices=vertices, samples=samples,
        success_rate=mean("success_rate"), mean_top_prob=mean("mean_top_prob"),
        vertex_distance=mean("vertex_distance", valid) if valid else None, data_distance=data_dist,
        distance_ratio=mean("vertex_distance", valid) / data_dist if valid else None,
        max_rel_feature_residual=max(r["max_rel_feature_residual"] for r in per_target),
        settings=settings, extras=extras, per_target=per_target, examples=[row["example"] for row in rows],
        flags=_flags(per_target, steps))


def _add_exact_reference(model: nn.Module, outs: list[PolytopeOutput], rows: list[dict]) -> None:
    """Per target: the exact polytope's vertex spread for the same units (None if the layer does not allow)."""
    for out, row in zip(outs, rows):
        verts = exact_vertices(model, out.layer, out.target, out.units)
        row["exact_vertex_distance"] = None if verts is None else mean_pairwise_distance(verts)


def _flags(per_target: list[dict], steps: int) -> list[Flag]:
    """A flag for targets whose search hit the budget, and one for targets no better than the control."""
    flags = []
    late = [r["index"] for r in per_target if not r["converged"]]
    if late:
        flags.append(Flag(NOT_CONVERGED, f"targets {late} did not meet the stopping rule within {steps} steps: "
                                         "their spread depends on the budget; raise steps"))
    failed = [r["index"] for r in per_target if r["failed"]]
    if failed:
        flags.append(Flag(FAILED, f"targets {failed}: the polytope samples' feature residual is not below the "
                                  "random-sphere control's, so they are not collisions", "error"))
    return flags


def _pick_other(labels: Tensor, j: int, gen: torch.Generator) -> int:
    """A seeded random index whose label differs from the target's (Li et al.'s 'another digit')."""
    candidates = torch.nonzero(labels.cpu() != labels[j].cpu()).flatten()
    if len(candidates) == 0:
        raise ValueError("init='other' needs an image with a different label among the images passed")
    return int(candidates[torch.randint(len(candidates), (1,), generator=gen)])


def _measure(model: nn.Module, out: PolytopeOutput, samples: int, gen: torch.Generator,
             batch_size: int) -> dict:
    """Sample the polytope of one target and the sphere control; return its per-target row."""
    t, verts = out.target_features, out.vertices  # (D,), (K, C, H, W)
    target_prob, _ = predict_with_features(model, out.layer, out.target[None])
    target_class = int(target_prob.argmax())
    points = convex_samples(verts, dirichlet_weights(samples, len(verts), gen))  # (N, C, H, W)
    probs, z = predict_with_features(model, out.layer, points, batch_size)
    residuals = relative_residuals(z, t)
    vertex_probs, _ = predict_with_features(model, out.layer, verts, batch_size)

    centroid = verts.mean(0)  # (C, H, W)
    radius = float((verts - centroid).flatten(1).norm(dim=1).mean())
    sphere = sphere_points(centroid, radius, samples, gen)  # (N, C, H, W), may leave [0, 1]
    clipped = sphere.clamp(0.0, 1.0)
    ball_probs, ball_z = predict_with_features(model, out.layer, clipped, batch_size)
    raw_probs, _ = predict_with_features(model, out.layer, sphere, batch_size)
    outside = (sphere != clipped).flatten(1).any(1)

    top_prob, top_class = probs.max(1)
    ball_residual = float(relative_residuals(ball_z, t).mean())
    return {
        "converged": out.converged, "steps_used": out.steps_used,
        # a polytope whose worst sample keeps the features no better than random points is no collision
        "failed": not float(residuals.max()) < ball_residual,
        "label": out.target_label, "target_pred": target_class, "target_prob": float(target_prob.max()),
        "units": out.units.tolist(), "active_units": out.active_units,
        "success_rate": float((top_class == target_class).float().mean()),
        "mean_top_prob": float(top_prob.mean()),
        "vertex_distance": mean_pairwise_distance(verts),
        "max_rel_feature_residual": float(residuals.max()),
        "mean_rel_feature_residual": float(residuals.mean()),
        "max_vertex_residual": float(out.vertex_residuals.max()),
        "vertex_success_rate": float((vertex_probs.argmax(1) == target_class).float().mean()),
        "ball_radius": radius,
        "ball_success_rate": float((ball_probs.argmax(1) == target_class).float().mean()),
        "ball_success_rate_unclipped": float((raw_probs.argmax(1) == target_class).float().mean()),
        "ball_clipped_fraction": float(outside.float().mean()),
        # classification alone rarely separates the two (random directions barely move an MNIST MLP);
        # the feature residual shows that only the polytope keeps the features
        "ball_mean_rel_feature_residual": ball_residual,
        "example": {"target": out.target.cpu(), "target_pred": target_class,
                    "target_prob": float(target_prob.max()), "vertices": verts.cpu(),
                    "vertex_pred": vertex_probs.argmax(1).tolist(), "vertex_prob": vertex_probs.max(1).values.tolist(),
                    "samples": points[:EXAMPLE_SAMPLES].cpu(), "sample_pred": top_class[:EXAMPLE_SAMPLES].tolist(),
                    "sample_prob": top_prob[:EXAMPLE_SAMPLES].tolist()},
    }
