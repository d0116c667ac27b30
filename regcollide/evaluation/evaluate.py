"""Evaluate one trained run folder into one eval entry (the JSON contract of DESIGN.md).

The entry gathers everything a leaderboard row or the correlation study needs: clean accuracy, PGD ease
(Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018), AutoAttack
(Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", ICML 2020), the weight-spectrum audit and the Null-space search (Ozbulak et al., "Exact Feature
Collisions in Neural Networks"), and the polytope search (Li, Zhang & Malik, "Approximate Feature
Collisions in Neural Nets", NeurIPS 2019).

Example::

    entry = evaluate_run("runs/mlp-erm", {"n": 200, "parts": ["clean", "pgd", "audit"]})
    entry["pgd"]["robust_acc"], entry["audit"]["nu"]
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from regcollide.evaluation import parts as parts_
from regcollide.evaluation.settings import (
    PARTS,
    PER_MODEL_PARTS,
    EvalSettings,
    PartOutcome,
    autoattack_subset,
    package_versions,
    part_hash,
    settings_hash,
    weights_hash,
)
from regcollide.io import read_json

__all__ = ["PARTS", "EvalSettings", "evaluate_run"]

# Where each part's value lives in the entry (clean accuracy is a bare number under "clean_acc").
ENTRY_KEY = {"clean": "clean_acc", "pgd": "pgd", "autoattack": "autoattack", "audit": "audit",
             "nullspace": "nullspace", "polytope": "polytope"}


def evaluate_run(run_dir: str | Path, settings: EvalSettings | dict | None = None, accelerator=None,
                 parts: Iterable[str] | None = None, progress: bool = False,
                 cache: dict | str | Path | None = None) -> dict[str, Any]:
    """Evaluate the run folder ``run_dir`` and return its eval entry (a JSON-ready dict).

    Args:
        run_dir: folder with ``config.yaml`` and ``model.safetensors`` (written by training).
        settings: :class:`EvalSettings`, a dict of its fields, or None for the defaults.
        accelerator: an ``accelerate.Accelerator``; with several processes each evaluates a shard of the
            test set for the per-sample parts and the metrics are gathered. None runs on one process.
        parts: override ``settings.parts`` (any of ``clean pgd autoattack audit nullspace polytope``).
        progress: show a tqdm bar over the parts (main process only).
        cache: a previous entry (dict or JSON path) to reuse finished parts from; None looks for
            ``results.json`` in the run folder. A part is reused only if its hash (weights bytes, dataset
            and the settings that part reads) is unchanged.

    Parts that cannot apply to a model (polytope without ReLU, Null-space search with nullity(W1) = 0,
    an evaluator refusing the model) are ``null`` in the entry with the reason under ``skipped``.
    """
    from regcollide.runs import load_run

    settings = EvalSettings.from_any(settings)
    if parts is not None:
        settings = dataclasses.replace(settings, parts=tuple(parts))
    run_dir = Path(run_dir)
    weights_file = run_dir / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {weights_file.name} is missing "
                                "(train one with train/regularized.py)")
    model, config = load_run(run_dir)
    if accelerator is not None:
        model = model.to(accelerator.device)  # load_run already put the fresh model in eval mode

    data_spec = settings.data or config.get("data", {}).get("spec", "mnist5k")
    w_hash = weights_hash(weights_file)
    hashes = {p: part_hash(p, settings, w_hash, data_spec) for p in PARTS}
    previous = _load_previous(cache, run_dir)
    outcomes = _reuse_cached(previous, hashes)

    todo = [p for p in PARTS if p in settings.parts and p not in outcomes]  # audit before nullspace
    is_main = accelerator is None or accelerator.is_main_process
    if todo:
        images, labels = _test_tensors(data_spec, settings, todo, model)
        for part in tqdm(todo, desc=f"eval {run_dir.name}", disable=not (progress and is_main)):
            outcomes[part] = _run_part(part, model, images, labels, settings, config, outcomes,
                                       accelerator, is_main)
    return _entry(run_dir, config, data_spec, settings, w_hash, hashes, outcomes)


def _test_tensors(data_spec: str, settings: EvalSettings, todo: list[str], model):
    from regcollide.data import load_tensors

    needs = {"clean": settings.n, "pgd": settings.n, "autoattack": autoattack_subset(settings),
             "nullspace": settings.nullspace_n, "polytope": settings.n, "audit": 0}
    n = max(needs[p] for p in todo)
    if n == 0:
        return None, None
    images, labels = load_tensors(data_spec, "test", n, seed=settings.seed)  # (N, C, H, W), (N,)
    device = next(model.parameters()).device
    return images.to(device), labels.to(device)


def _run_part(part: str, model, images, labels, settings: EvalSettings, config: dict,
              outcomes: dict[str, PartOutcome], accelerator, is_main: bool) -> PartOutcome:
    start = time.perf_counter()
    if part == "clean":
        out = parts_.run_clean(model, images[:settings.n], labels[:settings.n], settings, accelerator)
    elif part == "pgd":
        out = parts_.run_pgd(model, images[:settings.n], labels[:settings.n], settings, accelerator)
    elif part == "autoattack":
        k = autoattack_subset(settings)  # a prefix of PGD's images, so the two are comparable
        out = parts_.run_autoattack(model, images[:k], labels[:k], settings, accelerator)
    else:
        # Deterministic per-model parts: computed once on the main process, then shared.
        out = _per_model_part(part, model, images, labels, settings, config, outcomes) if is_main else None
        out = parts_.gather_objects(out, accelerator)[0]
    out.seconds = time.perf_counter() - start
    return out


def _per_model_part(part, model, images, labels, settings, config, outcomes) -> PartOutcome:
    assert part in PER_MODEL_PARTS
    if part == "audit":
        return parts_.run_audit(model, _input_shape(config, settings))
    if part == "nullspace":
        audit = outcomes["audit"].value if "audit" in outcomes else None
        return parts_.run_nullspace(model, images, labels, settings, audit)
    return parts_.run_polytope(model, images[:settings.n], labels[:settings.n], settings)


def _input_shape(config: dict, settings: EvalSettings) -> tuple[int, int, int]:
    """(C, H, W) the model was built for; a resolved config has it, older ones fall back to the data."""
    m = config.get("model", {})
    if m.get("in_chans") and m.get("img_size"):
        return (m["in_chans"], m["img_size"], m["img_size"])
    from regcollide.data import dataset_info

    info = dataset_info(settings.data or config.get("data", {}).get("spec", "mnist5k"))
    return (m.get("in_chans") or info.in_chans, m.get("img_size") or info.img_size,
            m.get("img_size") or info.img_size)


def _load_previous(cache: dict | str | Path | None, run_dir: Path) -> dict | None:
    if isinstance(cache, dict):
        return cache
    path = Path(cache) if cache is not None else run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except json.JSONDecodeError:
        return None  # a half-written or foreign file is simply not a cache


def _reuse_cached(previous: dict | None, hashes: dict[str, str]) -> dict[str, PartOutcome]:
    if not previous:
        return {}
    old_hashes = previous.get("part_hashes", {})
    reused = {}
    for part, h in hashes.items():
        if old_hashes.get(part) != h:
            continue
        reason = previous.get("skipped", {}).get(part)
        value = previous.get(ENTRY_KEY[part])
        if value is None and reason is None:
            continue  # recorded as not selected, nothing to reuse
        reused[part] = PartOutcome(value=value, reason=reason,
                                   seconds=previous.get("timings", {}).get(part, 0.0), extra={"cached": True})
    return reused


def _training_recipe(config: dict) -> dict:
    # The recipe is what shaped the weights; where the run was written and how it was evaluated are not.
    return {k: v for k, v in config.items()
            if k not in ("model", "data", "seed", "name", "run_name", "out_dir", "eval")}


def _entry(run_dir, config, data_spec, settings, w_hash, hashes, outcomes) -> dict[str, Any]:
    model_cfg = config.get("model", {})
    entry: dict[str, Any] = {
        "name": config.get("run_name") or config.get("name") or run_dir.name,
        "run_dir": str(run_dir),
        "model": model_cfg.get("name"),
        "width": model_cfg.get("width"),
        "model_config": model_cfg,
        "dataset": data_spec,
        "training": _training_recipe(config),
        "seed": config.get("seed"),
        "versions": package_versions(),
        "weights_hash": w_hash,
        "settings": settings.to_dict(),
        "settings_hash": settings_hash(settings),
        "part_hashes": {},
        "timings": {},
        "skipped": {},
        "cached_parts": [],
    }
    for part in PARTS:
        out = outcomes.get(part)
        if out is None:
            entry[ENTRY_KEY[part]] = None
            entry["skipped"][part] = "not selected in the eval settings"
            continue
        entry[ENTRY_KEY[part]] = out.value
        if part == "autoattack" and isinstance(out.value, dict):
            pgd = outcomes.get("pgd")
            entry["autoattack"] = parts_.compare_to_pgd(out.value, pgd.value if pgd is not None else None)
        entry["part_hashes"][part] = hashes[part]
        entry["timings"][part] = round(out.seconds, 3)
        if out.reason is not None:
            entry["skipped"][part] = out.reason
        if out.extra.get("cached"):
            entry["cached_parts"].append(part)
    return entry
