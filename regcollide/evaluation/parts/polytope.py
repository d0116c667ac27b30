"""The polytope search of Li, Zhang & Malik ("Approximate Feature Collisions in Neural Nets", NeurIPS
2019) at a ReLU layer, on ``polytope_targets`` target images (optimized as one batch)."""

from __future__ import annotations

from torch import nn

from regcollide.attacks.polytope.evaluate import evaluate_polytope
from regcollide.evaluation.registry import Part, PartContext, PartOutcome, applicable, register_part


@register_part("polytope", order=50,
               settings_keys=("n", "polytope_vertices", "polytope_samples", "polytope_targets", "polytope_steps",
                              "seed"))
class Polytope(Part):
    def run(self, ctx: PartContext) -> PartOutcome:
        if not any(isinstance(m, nn.ReLU) for m in ctx.model.modules()):
            return PartOutcome(reason="model has no nn.ReLU layer: the polytope search of Li et al. needs a "
                                      "ReLU pre-activation to pin the activation pattern")
        s, n = ctx.settings, ctx.settings.n
        return applicable(lambda: evaluate_polytope(
            ctx.model, ctx.images[:n], ctx.labels[:n], vertices=s.polytope_vertices, samples=s.polytope_samples,
            targets=s.polytope_targets, steps=s.polytope_steps, seed=s.seed, progress=ctx.progress))
