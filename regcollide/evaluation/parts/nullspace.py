"""The Null-space search (Ozbulak et al., "Exact Feature Collisions in Neural Networks", Definition 4),
restricted to valid images: the eval asks whether colliding images inside [0, 1] exist and how far they
moved relative to the typical distance between two test images (``valid_found``, ``relative_distance``).
Without that restriction every MLP collides "exactly" by construction, with images outside [0, 1]."""

from __future__ import annotations

from regcollide.attacks.nullspace.search import evaluate_nullspace
from regcollide.evaluation.registry import Part, PartContext, PartOutcome, applicable, register_part


@register_part("nullspace", order=40, settings_keys=("nullspace_n", "seed"))
class Nullspace(Part):
    def n_images(self, settings) -> int:
        return settings.nullspace_n

    def run(self, ctx: PartContext) -> PartOutcome:
        audit = ctx.outcomes.get("audit")
        if audit is not None and isinstance(audit.value, dict) and audit.value.get("first_nullity") == 0:
            return PartOutcome(reason="nullity(W1) = 0: the first layer has a trivial kernel, so there is "
                                      "no null space to search")
        n = min(ctx.settings.nullspace_n, len(ctx.labels))
        return applicable(lambda: evaluate_nullspace(ctx.model, ctx.images[:n], ctx.labels[:n], n=n,
                                                     valid_image=True, seed=ctx.settings.seed,
                                                     progress=ctx.progress))
