"""What each intervention claims to do to its target quantity, checked on the audit of the trained weights.

The architecture families set a structural quantity by construction (regcollide/models/interventions.py):
nullity(W1) of the first weight matrix (Ozbulak et al., "Exact Feature Collisions in Neural Networks") or the
rank of a bottleneck. The regularizer families claim a direction relative to ERM on the same architecture
(the ``width`` configuration of the same model): the σ_min penalty raises the smallest singular value relative to the
largest, decorrelation lowers the largest row cosine. Distillation and adversarial training claim nothing
structural: their architecture, hence nullity(W1), is that of the baseline.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np


def _vit_patch(model: str) -> tuple[int, int]:
    match = re.fullmatch(r"vit-p(\d+)-d(\d+)", model)
    if not match:
        raise ValueError(f"not a patch-ViT model name: {model}")
    return int(match.group(1)), int(match.group(2))


def _exact(value: float) -> tuple[str, Callable[[float], bool]]:
    return f"= {value:g}", lambda m: m == value


def _at_least(value: float) -> tuple[str, Callable[[float], bool]]:
    return f"≥ {value:g}", lambda m: m >= value


def _at_most(value: float) -> tuple[str, Callable[[float], bool]]:
    return f"≤ {value:g}", lambda m: m <= value


def _mlp_width(model: str) -> int | None:
    match = re.fullmatch(r"mlp-h(\d+)", model)
    return int(match.group(1)) if match else None


def claim(row: dict, baseline: float | None) -> tuple[str, str, Callable[[float], bool]] | None:
    """(quantity key, claimed value as text, test of one measured value) for ``row``'s configuration.

    ``baseline`` is the seed mean of the same quantity under ERM on the same architecture (the regularizer
    families' reference; None when the design has no such ERM configuration).
    """
    fam, level, model, dim = row["family"], row["level"], row["model"], row["input_dim"]
    if fam in ("width", "pm"):
        return ("first_nullity", *_exact(max(0, dim - int(level))))
    if fam == "proj":
        return ("first_nullity", *_at_least(int(level)))
    if fam == "rank":
        return ("second_rank", *_at_most(int(level)))
    if fam.startswith("vit-"):
        patch, embed = _vit_patch(model)
        return ("first_nullity", *_exact(max(0, row["input_chans"] * patch * patch - embed)))
    if fam == "singular" and baseline is not None:
        return ("mean_sigma_ratio", f"> {baseline:.4g} (ERM)", lambda m: m > baseline)
    if fam == "decorrelation" and baseline is not None:
        return ("mean_max_cosine", f"< {baseline:.4g} (ERM)", lambda m: m < baseline)
    width = _mlp_width(model)
    if width is not None:  # a training method on a fixed MLP: the architecture's nullity(W1), unchanged
        return ("first_nullity", *_exact(max(0, dim - width)))
    return None


def claims_table(rows: list[dict]) -> list[dict]:
    """One record per configuration: quantity, claim, measured seed values, and whether every seed holds it.

    A regularizer family's reference is the ERM configuration of the ``width`` family on the same model.
    """
    out = []
    for config in sorted({r["config"] for r in rows}):
        sub = [r for r in rows if r["config"] == config]
        probe = claim(sub[0], 0.0)
        key = probe[0] if probe else None
        erm = [r[key] for r in rows if key and r["family"] == "width" and r["model"] == sub[0]["model"]
               and r.get(key) is not None]
        found = claim(sub[0], float(np.mean(erm)) if erm else None)
        if found is None:
            continue
        key, text, test = found
        measured = [r.get(key) for r in sub]
        out.append({"config": config, "quantity": key, "claimed": text, "measured": measured,
                    "holds": all(m is not None and bool(test(m)) for m in measured)})
    return out
