"""AutoAttack robust accuracy (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020), standard version, on the first
``min(autoattack_n, n)`` of PGD's images, compared with PGD on exactly those images."""

from __future__ import annotations

from typing import Any

from regcollide.attacks.autoattack import evaluate_autoattack
from regcollide.attacks.checks import Flag
from regcollide.evaluation.registry import Part, PartContext, PartOutcome, register_part
from regcollide.evaluation.sharding import run_sharded

WEAKER_THAN_PGD = "autoattack_weaker_than_pgd"
SUBSET_MISMATCH = "autoattack_subset_mismatch"


def compare_to_pgd(autoattack: dict, pgd: dict | None) -> dict:
    """AutoAttack's result plus PGD's accuracies on the very images AutoAttack attacked.

    AutoAttack runs on the first k of PGD's images, so PGD's per-sample ε* (0 for a misclassified image,
    ≤ ε when PGD broke it at ε, > ε when it did not) gives PGD's verdict on exactly those k. AutoAttack
    starts with APGD-CE, a stronger PGD, so its robust accuracy above PGD's on the same images points to
    a broken evaluation (gradient masking, randomness, mismatched images) and is flagged.
    """
    ids = (WEAKER_THAN_PGD, SUBSET_MISMATCH)
    out = {**autoattack, "flags": [f for f in autoattack.get("flags", []) if f.get("id") not in ids]}
    k, eps_star = autoattack.get("n") or 0, (pgd or {}).get("eps_star") or []
    if not k or len(eps_star) < k:
        out["pgd_robust_acc_same_subset"] = out["pgd_clean_acc_same_subset"] = None
        return out
    eps = pgd["eps"]
    pgd_robust = sum(e > eps for e in eps_star[:k]) / k
    pgd_clean = sum(e > 0 for e in eps_star[:k]) / k
    out.update(subset=f"first {k} of the {len(eps_star)} PGD images",
               pgd_robust_acc_same_subset=pgd_robust, pgd_clean_acc_same_subset=pgd_clean)
    if autoattack["robust_acc"] > pgd_robust:
        out["flags"].append(Flag(WEAKER_THAN_PGD, (
            f"AutoAttack robust accuracy {autoattack['robust_acc']:.3f} exceeds PGD's {pgd_robust:.3f} on the "
            f"same {k} images; AutoAttack should be at least as strong, so suspect the evaluation")).to_dict())
    if autoattack["clean_acc"] != pgd_clean:
        out["flags"].append(Flag(SUBSET_MISMATCH, (
            f"clean accuracy {autoattack['clean_acc']:.3f} under AutoAttack but {pgd_clean:.3f} under PGD on "
            f"what should be the same {k} images")).to_dict())
    return out


@register_part("autoattack", order=20, per_sample=True, settings_keys=("seed", "norm", "eps"))
class AutoAttackPart(Part):
    def n_images(self, settings) -> int:
        # A prefix of PGD's images, never images PGD did not see, so the two are comparable.
        return min(settings.autoattack_n, settings.n)

    def cache_key(self, settings) -> dict[str, Any]:
        return super().cache_key(settings) | {"images": self.n_images(settings)}

    def run(self, ctx: PartContext) -> PartOutcome:
        s = ctx.settings
        return run_sharded(ctx, self.n_images(s), lambda x, y: evaluate_autoattack(
            ctx.model, x, y, norm=s.norm, eps=s.eps, seed=s.seed, batch_size=s.batch_size, progress=ctx.progress))

    def finalize(self, value: Any, values: dict[str, Any]) -> Any:
        return compare_to_pgd(value, values.get("pgd")) if isinstance(value, dict) else value
