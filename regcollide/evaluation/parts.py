"""The six parts of an eval entry, each a small function returning a :class:`PartOutcome`.

Per-sample parts (clean accuracy, PGD, AutoAttack) run on this process's shard of the test set and are
merged across processes; per-model parts (audit, Null-space search, polytope search) are deterministic
functions of the weights and run on the main process only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from regcollide.attacks.checks import Flag, merge_flags
from regcollide.evaluation.settings import EvalSettings, PartOutcome


def shard(images: torch.Tensor, labels: torch.Tensor, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous slice of the test set (all of it without accelerate)."""
    if accelerator is None or accelerator.num_processes == 1:
        return images, labels
    with accelerator.split_between_processes(list(range(len(labels)))) as idx:
        idx = torch.as_tensor(idx, dtype=torch.long)
    return images[idx], labels[idx]


def gather_objects(obj: Any, accelerator=None) -> list:
    """One object per process, in process order (a one-element list without accelerate)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [obj]
    return accelerator.gather_for_metrics([obj], use_gather_object=True)


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Predicted classes (N,), batched so large test sets fit in memory."""
    out = [model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def run_clean(model, images, labels, settings: EvalSettings, accelerator=None) -> PartOutcome:
    x, y = shard(images, labels, accelerator)
    correct = (predictions(model, x, settings.batch_size) == y).tolist()
    flags = [c for part in gather_objects(correct, accelerator) for c in part]
    return PartOutcome(value=sum(flags) / len(flags), extra={"n": len(flags)})


def _weighted(values: list[float | None], weights: list[int]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None and not _isnan(v) and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def merge_shards(results: list[dict], sizes: list[int]) -> dict:
    """Merge per-shard evaluator dicts into one dict for the whole test set.

    Rates (accuracies, curve success rates) are exact size-weighted means. Medians and means over
    successful samples cannot be recovered exactly from shard summaries, so they become size-weighted
    means of the shard values and the merged dict carries a flag saying so.
    """
    if len(results) == 1:
        return results[0]
    merged = dict(results[0])
    approximated = []
    for key, first in results[0].items():
        values = [r.get(key) for r in results]
        if isinstance(first, (int, float)) and not isinstance(first, bool) and key.endswith("acc"):
            merged[key] = _weighted(values, sizes)
        elif key == "mean_steps_to_success":
            # A mean over the samples broken at eps: weight each shard by how many it broke.
            broken = [((r.get("clean_acc") or 0) - (r.get("robust_acc") or 0)) * n for r, n in zip(results, sizes)]
            merged[key] = _weighted(values, [round(b) for b in broken])
        elif key == "n_censored":  # "n" is set from the shard sizes below
            merged[key] = sum(r.get(key) or 0 for r in results)
        elif isinstance(first, (int, float)) and not isinstance(first, bool) and len(set(values)) > 1:
            merged[key] = _weighted(values, sizes)
            approximated.append(key)
        elif key == "curve" and isinstance(first, list):
            merged[key] = [dict(point, success_rate=_weighted([r[key][i]["success_rate"] for r in results],
                                                             sizes))
                           for i, point in enumerate(first)]
        elif key == "flags" and isinstance(first, list):
            merged[key] = [f.to_dict() for f in merge_flags(*(r.get(key, []) for r in results))]
        elif isinstance(first, list):
            merged[key] = [v for r in results for v in r.get(key, [])]   # per-sample lists, e.g. eps_star
    if approximated:
        note = Flag("sharded_approximation", f"sharded over {len(results)} processes: {', '.join(approximated)} "
                    "are size-weighted means of per-shard values, not exact", severity="info")
        merged["flags"] = [*merged.get("flags", []), note.to_dict()]
    merged["n"] = sum(sizes)
    return merged


def _sharded_evaluator(fn, images, labels, accelerator, **kwargs) -> PartOutcome:
    x, y = shard(images, labels, accelerator)
    result = fn(x, y, **kwargs).to_dict() if len(y) else None
    gathered = [r for r in gather_objects((result, len(y)), accelerator) if r[0] is not None]
    return PartOutcome(value=merge_shards([r for r, _ in gathered], [n for _, n in gathered]))


def run_pgd(model, images, labels, settings: EvalSettings, accelerator=None) -> PartOutcome:
    from regcollide.attacks.pgd.ease import evaluate_pgd


    def call(x, y, **kw):
        return evaluate_pgd(model, x, y, **kw)

    return _sharded_evaluator(call, images, labels, accelerator, norm=settings.norm, eps=settings.eps,
                              steps=settings.pgd_steps, restarts=settings.pgd_restarts, seed=settings.seed,
                              batch_size=settings.batch_size, check_n=settings.pgd_check_n,
                              bisection_steps=settings.pgd_bisection_steps)


def run_autoattack(model, images, labels, settings: EvalSettings, accelerator=None) -> PartOutcome:
    from regcollide.attacks.autoattack import evaluate_autoattack

    def call(x, y, **kw):
        return evaluate_autoattack(model, x, y, **kw)

    return _sharded_evaluator(call, images, labels, accelerator, norm=settings.norm, eps=settings.eps,
                              seed=settings.seed)



def compare_to_pgd(autoattack: dict, pgd: dict | None) -> dict:
    """AutoAttack's result plus PGD's accuracies on the very images AutoAttack attacked.

    AutoAttack runs on the first k of PGD's images, so PGD's per-sample ε* (0 for a misclassified image,
    ≤ ε when PGD broke it at ε, > ε when it did not) gives PGD's verdict on exactly those k. AutoAttack
    starts with APGD-CE, a stronger PGD, so its robust accuracy above PGD's on the same images points to
    a broken evaluation (gradient masking, randomness, mismatched images) and is flagged.
    """
    ids = ("autoattack_weaker_than_pgd", "autoattack_subset_mismatch")
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
        out["flags"].append(Flag(ids[0], (
            f"AutoAttack robust accuracy {autoattack['robust_acc']:.3f} exceeds PGD's {pgd_robust:.3f} on the "
            f"same {k} images; AutoAttack should be at least as strong, so suspect the evaluation")).to_dict())
    if autoattack["clean_acc"] != pgd_clean:
        out["flags"].append(Flag(ids[1], (
            f"clean accuracy {autoattack['clean_acc']:.3f} under AutoAttack but {pgd_clean:.3f} under PGD on "
            f"what should be the same {k} images")).to_dict())
    return out


def run_audit(model, input_shape: tuple[int, ...]) -> PartOutcome:
    from regcollide.audit.spectrum import audit

    return PartOutcome(value=audit(model, input_shape).to_dict())


def run_nullspace(model, images, labels, settings: EvalSettings, audit: dict | None) -> PartOutcome:
    if audit is not None and audit.get("first_nullity") == 0:
        return PartOutcome(reason="nullity(W1) = 0: the first layer has a trivial kernel, so there is "
                                  "no null space to search")
    from regcollide.attacks.nullspace.search import evaluate_nullspace

    n = min(settings.nullspace_n, len(labels))
    return _applicable(lambda: evaluate_nullspace(model, images[:n], labels[:n], n=n, seed=settings.seed))


def run_polytope(model, images, labels, settings: EvalSettings) -> PartOutcome:
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        return PartOutcome(reason="model has no nn.ReLU layer: the polytope search of Li et al. needs a "
                                  "ReLU pre-activation to pin the activation pattern")
    from regcollide.attacks.polytope.evaluate import evaluate_polytope

    return _applicable(lambda: evaluate_polytope(model, images, labels, vertices=settings.polytope_vertices,
                                                 samples=settings.polytope_samples,
                                                 targets=settings.polytope_targets,
                                                 steps=settings.polytope_steps, seed=settings.seed))


def _applicable(call) -> PartOutcome:
    """Run an evaluator; a ValueError/NotImplementedError means 'does not apply to this model'.

    Evaluators raise those for models outside their scope (documented in their docstrings). The entry
    records the message instead of failing; any other exception is a bug and propagates.
    """
    try:
        return PartOutcome(value=call().to_dict())
    except (ValueError, NotImplementedError) as err:
        return PartOutcome(reason=f"{type(err).__name__}: {err}")
