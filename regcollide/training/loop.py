"""The training loop: ``train(config)`` trains one run folder on one process or many (``accelerate``).

The loss is the cross entropy (unless a regularizer such as PGD-AT, Madry et al. 2018, replaces it) plus
``sum(weight * term)`` over the configured regularizers; every term is logged on its own in
``metrics.jsonl``. The run folder holds ``config.yaml``, ``model.safetensors``, ``metrics.jsonl``,
``results.json`` (``regcollide.evaluation.evaluate.evaluate_run``) and ``state/`` (resumable states written
without pickle, :mod:`regcollide.training.checkpoint`).

Determinism: the shuffle order depends only on (seed, epoch), the learning rate and the augmentation draws
only on the step counter, and a state stores the model, optimizer, RNG states, regularizer state and step
counters, so a resumed run replays the same batches with the same randomness as an uninterrupted one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import filter_trackers
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from regcollide import runs
from regcollide.data.augment import Augmentation
from regcollide.evaluation.evaluate import evaluate_run
from regcollide.io import CONFIG_FILE, WEIGHTS_FILE, atomic_write_bytes, save_weights, write_json
from regcollide.regularizers.base import Regularizer
from regcollide.runs import MetricsLog
from regcollide.training.callbacks import Callback, any_stop
from regcollide.training.checkpoint import Resumable, latest_state, remove_partial_states, restore_newest, save_state
from regcollide.training.config import (
    Config,
    build_model,
    build_regularizers,
    dump_config,
    resolve,
)
from regcollide.training.data import get_dataloaders
from regcollide.training.launch import claim_on_main, make_accelerator, tracker_config
from regcollide.training.resume import check_resume_config, check_resume_processes
from regcollide.training.state import (
    RegularizerStates,
    TrainingDiverged,
    TrainState,
    build_optimizer,
    learning_rate,
)
from regcollide.training.step import evaluate_accuracy, train_record, training_step

CONTINUE, PAUSE, FINISH = "continue", "pause", "finish"


@dataclass
class RunResult:
    """What :func:`train` returns."""

    run_dir: Path
    completed: bool             # False when a callback paused the run mid-epoch (``resume=run_dir`` finishes it)
    global_step: int
    train_seconds: float
    model: torch.nn.Module | None = None          # the trained model, unwrapped, finalized, in eval mode
    results: dict = field(default_factory=dict)   # the end-of-run eval entry (results.json); {} if none


@dataclass
class _Session:
    """The prepared pieces of one run, shared by the loop's steps."""

    config: Config
    accelerator: Accelerator
    run_dir: Path
    model: torch.nn.Module            # as prepared (DDP-wrapped on several processes)
    raw_model: torch.nn.Module        # unwrapped: regularizers and states see plain layer names
    optimizer: torch.optim.Optimizer
    regularizers: list
    weights: list[float]              # one per regularizer
    train_loader: DataLoader
    test_loader: DataLoader
    state: TrainState
    resumable: Resumable
    log: MetricsLog
    callbacks: Sequence[Callback]
    augment: object | None
    names: list[str] = field(default_factory=list)
    total_steps: int = 0
    window: torch.Tensor | None = None  # (1 + R + 3,) per-term sums, loss sum, correct, count since the last log


def term_names(names: Sequence[str]) -> list[str]:
    """Regularizer names for the log, numbered when a name repeats (singular, singular_2)."""
    out: list[str] = []
    for name in names:
        count = sum(1 for n in out if n == name or n.startswith(name + "_"))
        out.append(name if count == 0 else f"{name}_{count + 1}")
    return out


def _components(config: Config, model: torch.nn.Module | None,
                regularizers: Sequence[tuple[float, Regularizer]] | None):
    """(model, regularizers set up on it, weights, log names): from the config unless passed in."""
    resolve(config)
    model = build_model(config) if model is None else model
    if regularizers is None:
        model, regs = build_regularizers(config, model)
        return model, regs, [rc.weight for rc in config.regularizers], term_names(rc.name for rc in config.regularizers)
    regs = [reg for _, reg in regularizers]
    for reg in regs:
        model = reg.setup(model)
    return model, regs, [float(w) for w, _ in regularizers], term_names(reg.name for reg in regs)


def build_augmentation(config: Config) -> Augmentation | None:
    """The configured on-device augmentation (random crop after padding, flip), or None when it is off."""
    aug = config.data.augment
    return Augmentation(crop_padding=aug.crop_padding, hflip=aug.hflip) if aug.enabled else None


def train(config: Config, *, accelerator: Accelerator | None = None, callbacks: Sequence[Callback] = (),
          dataloaders: tuple[DataLoader, DataLoader] | None = None, resume: str | os.PathLike | None = None,
          overwrite: bool = False, default_name: str = "run", cpu: bool = False,
          model: torch.nn.Module | None = None,
          regularizers: Sequence[tuple[float, Regularizer]] | None = None) -> RunResult:
    """Train ``config`` into a new run folder (or continue ``resume``) and evaluate it; see the module doc.

    Every check (config, run name, resume compatibility) runs before the folder is created or changed.
    ``dataloaders`` replaces :func:`regcollide.training.data.get_dataloaders`; ``model`` and
    ``regularizers`` ((weight, regularizer) pairs) replace the ones the config names (the run folder's
    config.yaml still records the config as given). Raises ``ConfigError``, ``RunFolderError`` or
    ``CheckpointError`` (one-line messages) and ``TrainingDiverged``.
    """
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    set_seed(config.seed)  # before the model exists: identical initial weights on every process
    model, regs, weights, names = _components(config, model, regularizers)
    augment = build_augmentation(config)
    if resume is not None:
        check_resume_config(Path(resume), config)
    else:
        runs.check_run_name(config.run_name if config.run_name is not None else default_name)
    accelerator = accelerator or make_accelerator(config, cpu)
    if resume is not None:
        check_resume_processes(Path(resume), accelerator.num_processes)
    train_loader, test_loader = dataloaders or get_dataloaders(config)
    run_dir = Path(resume) if resume is not None else claim_on_main(accelerator, config, default_name, overwrite)
    config.out_dir, config.run_name = str(run_dir.parent), run_dir.name
    optimizer = build_optimizer(config.train, model)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    raw_model = accelerator.unwrap_model(model)
    state = TrainState()
    session = _Session(config, accelerator, run_dir, model, raw_model, optimizer, regs, weights, train_loader,
                       test_loader, state, Resumable(raw_model, optimizer, RegularizerStates(regs), state),
                       MetricsLog(run_dir / "metrics.jsonl", accelerator), callbacks, augment,
                       ["cross_entropy"] + names, config.train.epochs * len(train_loader),
                       torch.zeros(len(regs) + 4))
    _open_run(session, resuming=resume is not None)
    return _run(session)


def _say(accelerator: Accelerator, line: str) -> None:
    if accelerator.is_main_process:
        print(line, file=sys.stderr, flush=True)


def _open_run(s: _Session, resuming: bool) -> None:
    """Restore the newest usable state (resume), then write config.yaml and start the trackers."""
    acc = s.accelerator
    if resuming:
        restored = restore_newest(s.run_dir, s.resumable, acc.process_index, lambda line: _say(acc, line))
        if restored is not None:
            _say(acc, f"resumed from {restored} (epoch {s.state.epoch}, step {s.state.global_step})")
    acc.wait_for_everyone()
    if acc.is_main_process:  # only now, after every check passed, does the folder change
        atomic_write_bytes(s.run_dir / CONFIG_FILE, dump_config(s.config).encode())
        remove_partial_states(s.run_dir)
    if resuming:
        s.log.truncate_after(s.state.global_step)  # lines after the state are replayed below
    if s.config.train.log_with:
        acc.project_configuration.set_directories(str(s.run_dir))
        acc.log_with = filter_trackers(s.config.train.log_with, acc.logging_dir)
        acc.init_trackers(s.run_dir.name, config=tracker_config(s.config))
    acc.wait_for_everyone()


def _run(s: _Session) -> RunResult:
    acc = s.accelerator
    for cb in s.callbacks:
        cb.on_train_begin(s.run_dir, s.state)
    started = time.perf_counter()
    bar = tqdm(total=s.total_steps, initial=s.state.global_step, desc=f"train {s.run_dir.name}",
               dynamic_ncols=True, disable=not (acc.is_main_process and s.config.train.progress))
    outcome = CONTINUE
    s.model.train()
    try:
        while s.state.epoch < s.config.train.epochs and outcome == CONTINUE:
            outcome = _train_epoch(s, bar)
    finally:
        bar.close()  # so an error (full disk, divergence) is printed on its own line, not glued to the bar
    train_seconds = time.perf_counter() - started
    model = _finalize(s)
    if outcome == PAUSE:  # the state is saved; no model.safetensors, so the run folder still reads as unfinished
        acc.end_training()
        return RunResult(s.run_dir, False, s.state.global_step, train_seconds, model.eval())
    _write_end(s, model, train_seconds)
    results = final_evaluation(s) if s.config.eval.enabled else {}
    acc.end_training()
    return RunResult(s.run_dir, True, s.state.global_step, train_seconds, model.eval(), results)


def _save(s: _Session) -> None:
    save_state(s.accelerator, s.run_dir, s.resumable, s.config.train.keep_checkpoints)


def _train_epoch(s: _Session, bar) -> str:
    """One epoch (or its rest, when resumed mid-epoch).

    Returns PAUSE when a callback stopped the run mid-epoch, FINISH when one ended it at the epoch end
    (early stopping), else CONTINUE.
    """
    cfg, acc, state = s.config.train, s.accelerator, s.state
    steps_per_epoch = len(s.train_loader)
    loader = s.train_loader
    if state.step_in_epoch:
        loader = acc.skip_first_batches(s.train_loader, state.step_in_epoch)
    # accelerate's loaders call set_epoch(their own iteration count) on the sampler when iterated; a
    # fresh skip-loader would count from 0, so pin the loader's count to the true epoch.
    loader.set_epoch(state.epoch)
    window = s.window
    for batch in loader:
        values = _step(s, batch, window)
        bar.update(1)
        if state.global_step % cfg.log_every == 0:
            sums = acc.reduce(window.to(acc.device), "sum").cpu().tolist()
            s.log.write(train_record(state, s.names, sums, s.optimizer.param_groups[0]["lr"]))
            window.zero_()
        saved = (cfg.save_states and cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0
                 and state.step_in_epoch < steps_per_epoch)  # the epoch end saves its own state
        if saved:
            _save(s)
        if any_stop(s.callbacks, "on_step_end", state, dict(zip(s.names, values))):
            if not saved:
                _save(s)
            return PAUSE
    record = _epoch_record(s)
    s.log.write(record)
    if record["test_acc"] is not None:
        bar.set_postfix(test_acc=f"{record['test_acc']:.4f}")
    if cfg.save_states:
        _save(s)
    return FINISH if any_stop(s.callbacks, "on_epoch_end", state, record) else CONTINUE


def _epoch_record(s: _Session) -> dict:
    """Close the epoch: its mean objective and training accuracy over all processes, and the test accuracy."""
    acc, state = s.accelerator, s.state
    sums = torch.tensor([state.epoch_loss, state.epoch_correct, state.epoch_seen], dtype=torch.float64)
    loss_sum, correct, seen = acc.reduce(sums.to(acc.device), "sum").cpu().tolist()
    state.epoch += 1
    state.step_in_epoch = state.epoch_correct = state.epoch_seen = 0
    state.epoch_loss = 0.0
    test_acc = evaluate_accuracy(s.model, s.test_loader, acc) if s.config.eval.every_epoch else None
    return {"event": "epoch", "epoch": state.epoch, "step": state.global_step, "test_acc": test_acc,
            "epoch_loss": loss_sum / max(seen, 1.0), "epoch_train_acc": correct / max(seen, 1.0)}


def _step(s: _Session, batch: dict, window: torch.Tensor) -> list[float]:
    """One optimizer step; adds this batch to ``window`` and returns the per-term values."""
    acc, state = s.accelerator, s.state
    for group in s.optimizer.param_groups:
        group["lr"] = learning_rate(s.config.train, state.global_step, s.total_steps)
    if s.augment is not None:
        # Draws are a pure function of (seed, step, process): a resumed run augments identically.
        gen = torch.Generator().manual_seed((s.config.seed * 1_000_003 + state.global_step) * 4099
                                            + acc.process_index)
        batch = {**batch, "image": s.augment(batch["image"], gen)}  # (B, C, H, W)
    loss, outputs, values = training_step(s.model, s.raw_model, batch, s.regularizers, s.weights)
    everywhere = acc.gather(values[None])  # (P, 1 + R): all processes stop together
    if not torch.isfinite(everywhere).all():
        bad = [name for name, ok in zip(s.names, torch.isfinite(everywhere).all(0).tolist()) if not ok]
        raise TrainingDiverged(bad, state.global_step, latest_state(s.run_dir),
                               dict(zip(s.names, values.tolist())))
    acc.backward(loss)
    if s.config.train.grad_clip:
        acc.clip_grad_norm_(s.model.parameters(), s.config.train.grad_clip)
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    state.global_step += 1
    state.step_in_epoch += 1
    n = len(batch["label"])  # sample-weighted sums, so the logged means are over samples
    state.samples_seen += n
    state.shard_digest = (state.shard_digest * 1_000_003 + int(batch["index"].sum())) % (1 << 61)
    correct = float((outputs.argmax(1) == batch["label"]).sum())
    window += torch.cat([values.cpu() * n, torch.tensor([float(loss.detach()) * n, correct, n])])
    state.epoch_loss += float(loss.detach()) * n
    state.epoch_correct += int(correct)
    state.epoch_seen += n
    return values.tolist()


def _finalize(s: _Session) -> torch.nn.Module:
    """The unwrapped model with training-only wrappers (e.g. spectral norm) removed."""
    s.accelerator.wait_for_everyone()
    raw_model = s.raw_model
    for reg in reversed(s.regularizers):
        raw_model = reg.finalize(raw_model)
    return raw_model


def _write_end(s: _Session, raw_model: torch.nn.Module, train_seconds: float) -> None:
    """Final weights and the end line with per-process digests."""
    acc, state = s.accelerator, s.state
    digests = acc.gather_for_metrics([runs.weights_digest(raw_model)], use_gather_object=True)
    shards = acc.gather_for_metrics([[state.samples_seen, state.shard_digest]], use_gather_object=True)
    s.log.write({"event": "end", "step": state.global_step, "weights_sha256": digests, "shards": shards,
                 "num_processes": acc.num_processes, "train_seconds": train_seconds})
    if acc.is_main_process:
        save_weights(raw_model, s.run_dir / WEIGHTS_FILE)
    acc.wait_for_everyone()


def final_evaluation(s: _Session) -> dict:
    """The eval entry of the finished run, written to results.json (same code as ``regcollide eval``)."""
    acc = s.accelerator
    entry = evaluate_run(s.run_dir, s.config.eval.settings(), accelerator=acc, progress=s.config.train.progress)
    if acc.is_main_process:
        write_json(entry, s.run_dir / "results.json")
    acc.wait_for_everyone()
    return entry
