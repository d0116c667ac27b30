"""Per-sample parts under several processes: each evaluates a contiguous shard, the results are merged.

Rates (accuracies, curve success rates) merge exactly as size-weighted means; summaries that cannot be
recovered from shard summaries (medians) become size-weighted means and the merged result carries an
``info`` flag saying so. Flags merge as :class:`regcollide.attacks.checks.Flag` dicts, each once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from regcollide.attacks.checks import Flag, merge_flags
from regcollide.evaluation.registry import PartContext, PartOutcome


def shard(images: torch.Tensor, labels: torch.Tensor, accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous slice of the eval set (all of it without accelerate)."""
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


def _weighted(values: list[float | None], weights: list[int]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights)
             if v is not None and not (isinstance(v, float) and math.isnan(v)) and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _merge_key(key: str, first: Any, results: list[dict], sizes: list[int]) -> tuple[Any, bool]:
    """(merged value, whether it is an approximation) for one key of the shard results."""
    values = [r.get(key) for r in results]
    if _is_number(first) and key.endswith("acc"):
        return _weighted(values, sizes), False
    if key == "mean_steps_to_success":
        # A mean over the samples broken at eps: weight each shard by how many it broke.
        broken = [((r.get("clean_acc") or 0) - (r.get("robust_acc") or 0)) * n for r, n in zip(results, sizes)]
        return _weighted(values, [round(b) for b in broken]), False
    if key in ("n", "n_censored", "attacked") and _is_number(first):
        return sum(v or 0 for v in values), False
    if key == "seconds" and _is_number(first):
        return max(values), False  # the shards run in parallel
    if _is_number(first):
        return (_weighted(values, sizes), True) if len(set(values)) > 1 else (first, False)
    if key == "curve" and isinstance(first, list):
        return [dict(point, success_rate=_weighted([r[key][i]["success_rate"] for r in results], sizes))
                for i, point in enumerate(first)], False
    if key == "flags" and isinstance(first, list):
        return [f.to_dict() for f in merge_flags(*(r.get(key) or [] for r in results))], False
    if key == "breakdown" and isinstance(first, list):
        return [_merge_row([r[key][i] for r in results], sizes) for i in range(len(first))], False
    if isinstance(first, list):
        return [v for r in results for v in r.get(key) or []], False   # per-sample lists, e.g. eps_star
    return first, False


def _merge_row(rows: list[dict], sizes: list[int]) -> dict:
    """One AutoAttack breakdown row over shards: accuracies weighted, counts summed, the slowest time."""
    out = dict(rows[0])
    for key, first in rows[0].items():
        if key != "attack" and _is_number(first):
            out[key] = _merge_key(key, first, rows, sizes)[0]
    return out


def merge_shards(results: list[dict], sizes: list[int]) -> dict:
    """Merge per-shard evaluator dicts (``result.to_dict()``) into one dict for the whole eval set."""
    if len(results) == 1:
        return results[0]
    merged, approximated = dict(results[0]), []
    for key, first in results[0].items():
        merged[key], approx = _merge_key(key, first, results, sizes)
        if approx:
            approximated.append(key)
    if approximated:
        note = Flag("sharded_approximation", f"sharded over {len(results)} processes: {', '.join(approximated)} "
                    "are size-weighted means of per-shard values, not exact", severity="info")
        merged["flags"] = [*(merged.get("flags") or []), note.to_dict()]
    merged["n"] = sum(sizes)
    return merged


def run_sharded(ctx: PartContext, n: int, evaluate: Callable[[torch.Tensor, torch.Tensor], Any]) -> PartOutcome:
    """Run ``evaluate(images, labels) -> result`` on this process's shard of the first ``n`` images, merge."""
    x, y = shard(ctx.images[:n], ctx.labels[:n], ctx.accelerator)
    result = evaluate(x, y).to_dict() if len(y) else None
    gathered = [r for r in gather_objects((result, len(y)), ctx.accelerator) if r[0] is not None]
    return PartOutcome(value=merge_shards([r for r, _ in gathered], [k for _, k in gathered]))
