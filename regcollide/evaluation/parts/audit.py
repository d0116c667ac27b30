"""The weight-spectrum audit (ν, μ, nullity; Ozbulak et al., "Exact Feature Collisions in Neural
Networks"): a deterministic function of the weights, computed once per model."""

from __future__ import annotations

from regcollide.audit.spectrum import audit
from regcollide.evaluation.registry import Part, PartContext, PartOutcome, register_part


@register_part("audit", order=30)
class Audit(Part):
    def n_images(self, settings) -> int:
        return 0

    def run(self, ctx: PartContext) -> PartOutcome:
        return PartOutcome(value=audit(ctx.model, ctx.input_shape).to_dict())
