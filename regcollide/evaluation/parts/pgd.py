"""PGD ease (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018):
robust accuracy at ε, per-sample smallest ε*, the success curve and the sanity flags, on ``n`` images."""

from __future__ import annotations

from regcollide.attacks.pgd.ease import evaluate_pgd
from regcollide.evaluation.registry import Part, PartContext, PartOutcome, register_part
from regcollide.evaluation.sharding import run_sharded


@register_part("pgd", order=10, per_sample=True,
               settings_keys=("n", "seed", "norm", "eps", "pgd_steps", "pgd_restarts", "pgd_check_n",
                              "pgd_bisection_steps"))
class PGDEase(Part):
    def run(self, ctx: PartContext) -> PartOutcome:
        s = ctx.settings
        return run_sharded(ctx, s.n, lambda x, y: evaluate_pgd(
            ctx.model, x, y, norm=s.norm, eps=s.eps, steps=s.pgd_steps, restarts=s.pgd_restarts, seed=s.seed,
            batch_size=s.batch_size, check_n=s.pgd_check_n, bisection_steps=s.pgd_bisection_steps,
            progress=ctx.progress))
