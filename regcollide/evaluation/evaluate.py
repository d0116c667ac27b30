"""Evaluate a model into one eval entry (the JSON contract of docs/design.md).

The entry gathers what a leaderboard row or the correlation study needs: clean accuracy, PGD ease
(Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018), AutoAttack
(Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", ICML 2020), the weight-spectrum audit and the Null-space search (Ozbulak et al., "Exact Feature
Collisions in Neural Networks"), and the polytope search (Li, Zhang & Malik, "Approximate Feature
Collisions in Neural Nets", NeurIPS 2019). Each is an eval part registered by name
(:mod:`regcollide.evaluation.registry`).

:func:`evaluate_run` is a thin wrapper for a trained run folder: it adds the run's identity (name, model,
training recipe, seed, weights hash) and reuses finished parts of a previous entry when the weights, the
dataset and the settings each part reads are unchanged.

Example::

    entry = evaluate_model(model, (images, labels), EvalSettings(parts=("clean", "pgd", "audit")))
    entry["pgd"]["robust_acc"], entry["audit"]["nu"]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from regcollide._modes import eval_mode
from regcollide.evaluation.cache import package_versions, part_hash, reuse_cached, settings_hash, weights_hash
from regcollide.evaluation.inputs import eval_tensors, pick_threads, torch_threads
from regcollide.evaluation.registry import PartContext, PartOutcome, get_part
from regcollide.evaluation.settings import PARTS, EvalSettings
from regcollide.evaluation.sharding import gather_objects
from regcollide.io import read_json
from regcollide.runs import load_run


def evaluate_model(model: nn.Module, data: Any, settings: EvalSettings | dict | None = None, *,
                   accelerator=None, progress: bool = False, input_shape: tuple[int, ...] | None = None,
                   dataset: str | None = None, reuse: dict[str, PartOutcome] | None = None,
                   label: str = "eval") -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` with ``settings`` and return its eval entry (a JSON-ready dict).

    Args:
        model: any classifier taking (N, C, H, W) images in [0, 1] and returning logits (N, K). Its
            train/eval mode is restored afterwards.
        data: a dataset spec (its test split), an ``(images, labels)`` pair, a Dataset or a DataLoader.
        settings: :class:`EvalSettings`, a dict of its fields, or None for the defaults.
        accelerator: an ``accelerate.Accelerator``; with several processes each evaluates a shard of the
            images for the per-sample parts and the results are gathered. None runs on one process.
        progress: show labelled progress bars on stderr (main process only).
        input_shape: (C, H, W) for the audit; defaults to the shape of the eval images.
        dataset: the dataset name recorded in the entry (defaults to ``data`` when it is a spec).
        reuse: outcomes of parts already computed (the run-folder cache); they are not recomputed.
        label: what the progress bar calls this model.

    Parts that cannot apply to a model (polytope without ReLU, Null-space search with nullity(W1) = 0,
    an evaluator refusing the model) are ``null`` in the entry with the reason under ``skipped``.
    """
    settings = EvalSettings.from_any(settings)
    outcomes = dict(reuse or {})
    todo = [p for p in PARTS if p in settings.parts and p not in outcomes]
    is_main = accelerator is None or accelerator.is_main_process
    n_images = max((get_part(p).n_images(settings) for p in todo), default=0)
    images, labels = eval_tensors(data, max(n_images, 1), seed=settings.seed)
    if len(labels) < min(settings.n, n_images):  # a split smaller than asked for: record the n actually used
        if is_main:
            print(f"warning: n = {settings.n} is more than the {len(labels)} images of the eval data; "
                  f"using all {len(labels)}", file=sys.stderr)
        settings = settings.replace(n=len(labels))
    device = next((p.device for p in model.parameters()), images.device)
    ctx = PartContext(model=model, images=images.to(device), labels=labels.to(device), settings=settings,
                      input_shape=tuple(input_shape or images.shape[1:]), outcomes=outcomes,
                      accelerator=accelerator, progress=progress and is_main)
    with eval_mode(model), torch_threads(pick_threads(model, settings.num_threads)):
        bar = tqdm(todo, desc=label, unit="part", disable=not ctx.progress, file=sys.stderr)
        for i, part in enumerate(bar):
            bar.set_description(f"{label}: {part} ({i + 1}/{len(todo)})")
            outcomes[part] = _run_part(part, ctx, is_main)
    name = dataset or (data if isinstance(data, str) else "custom")
    return build_entry(settings, outcomes, name)


def _run_part(part: str, ctx: PartContext, is_main: bool) -> PartOutcome:
    start, spec = time.perf_counter(), get_part(part)
    if spec.per_sample:
        out = spec.run(ctx)
    else:
        # Deterministic per-model parts: computed once on the main process, then shared.
        out = gather_objects(spec.run(ctx) if is_main else None, ctx.accelerator)[0]
    out.seconds = time.perf_counter() - start
    return out


def build_entry(settings: EvalSettings, outcomes: dict[str, PartOutcome], dataset: str) -> dict[str, Any]:
    """The entry: one key per part (``null`` when skipped or not selected), timings, threat model."""
    values = {p: out.value for p, out in outcomes.items()}
    entry: dict[str, Any] = {
        "dataset": dataset, "norm": settings.norm, "eps": settings.eps, "n": settings.n,
        "threat_model": {"dataset": dataset, "norm": settings.norm, "eps": settings.eps, "n": settings.n},
        "versions": package_versions(), "settings": settings.to_dict(), "settings_hash": settings_hash(settings),
        "timings": {}, "skipped": {}, "cached_parts": [],
    }
    for part in PARTS:
        spec, out = get_part(part), outcomes.get(part)
        if out is None:
            entry[spec.entry_key] = None
            entry["skipped"][part] = "not selected in the eval settings"
            continue
        entry[spec.entry_key] = spec.finalize(out.value, values)
        entry["timings"][part] = round(out.seconds, 3)
        if out.reason is not None:
            entry["skipped"][part] = out.reason
        if out.cached:
            entry["cached_parts"].append(part)
    return entry


def evaluate_run(run_dir: str | Path, settings: EvalSettings | dict | None = None, accelerator=None,
                 parts: tuple[str, ...] | list[str] | None = None, progress: bool = False,
                 cache: dict | str | Path | None = None) -> dict[str, Any]:
    """Evaluate the run folder ``run_dir`` (``config.yaml`` + ``model.safetensors``) into its eval entry.

    ``settings`` and ``accelerator`` are those of :func:`evaluate_model`; ``parts`` overrides
    ``settings.parts``. ``cache`` is a previous entry (dict or JSON path) to reuse finished parts from;
    None looks for ``results.json`` in the run folder, ``{}`` reuses nothing.
    """
    settings = EvalSettings.from_any(settings)
    if parts is not None:
        settings = settings.replace(parts=tuple(parts))
    run_dir = Path(run_dir)
    weights_file = run_dir / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {weights_file.name} is missing "
                                "(train one with train/regularized.py)")
    model, config = load_run(run_dir)
    if accelerator is not None:
        model = model.to(accelerator.device)
    data_spec = settings.data or _get(config, "data", "spec") or "mnist5k"
    w_hash = weights_hash(weights_file)
    hashes = {p: part_hash(p, settings, w_hash, data_spec) for p in PARTS}
    reuse = {p: out for p, out in reuse_cached(_load_previous(cache, run_dir), hashes).items() if p in settings.parts}
    entry = evaluate_model(model, data_spec, settings, accelerator=accelerator, progress=progress,
                           input_shape=_input_shape(config), dataset=data_spec, reuse=reuse,
                           label=f"eval {run_dir.name}")
    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    return {"name": config.get("run_name") or config.get("name") or run_dir.name, "run_dir": str(run_dir),
            "model": model_cfg.get("name"), "width": model_cfg.get("width"), "model_config": model_cfg,
            "training": _training_recipe(config), "seed": config.get("seed"), "weights_hash": w_hash,
            "part_hashes": {p: hashes[p] for p in PARTS if entry.get("timings", {}).get(p) is not None},
            **entry}


def _get(config: dict, *keys: str) -> Any:
    for key in keys:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def _input_shape(config: dict) -> tuple[int, int, int] | None:
    """(C, H, W) the model was built for, when the resolved config records it."""
    chans, size = _get(config, "model", "in_chans"), _get(config, "model", "img_size")
    return (chans, size, size) if chans and size else None


def _load_previous(cache: dict | str | Path | None, run_dir: Path) -> dict | None:
    if isinstance(cache, dict):
        return cache
    path = Path(cache) if cache is not None else run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None  # a half-written or foreign file is simply not a cache


def _training_recipe(config: dict) -> dict:
    # The recipe is what shaped the weights; where the run was written and how it was evaluated are not.
    return {k: v for k, v in config.items()
            if k not in ("model", "data", "seed", "name", "run_name", "out_dir", "eval")}
