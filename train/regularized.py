#!/usr/bin/env python
"""Train a model with collision regularizers on one process or many (Hugging Face ``accelerate``).

    python train/regularized.py                                  # configs/default.yaml
    python train/regularized.py configs/singular.yaml --set train.epochs=3
    accelerate launch --multi_gpu --num_processes 2 train/regularized.py configs/erm.yaml
    python train/regularized.py --resume runs/default            # continue from the last checkpoint

Shaped like accelerate's ``examples/nlp_example.py`` and ``by_feature/checkpointing.py``:
``get_dataloaders`` -> ``training_function(config, args)`` -> a thin ``main``. The loss is the cross entropy
(unless a regularizer such as PGD-AT replaces it) plus ``sum(weight * term)`` over the configured
regularizers; every term is logged on its own in ``metrics.jsonl``. The run folder holds ``config.yaml``,
``model.safetensors``, ``metrics.jsonl``, ``results.json`` (``regcollide.evaluation.evaluate.evaluate_run``) and
``state/`` (accelerate states for ``--resume``).

Determinism: the shuffle order depends only on (seed, epoch) and the learning rate only on the step
counter, and ``save_state`` stores the model, optimizer, RNG states and step counters, so a resumed run
replays the same batches with the same randomness as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from regcollide import runs
from regcollide._modes import eval_mode
from regcollide.data import load_dataset, make_loader
from regcollide.io import save_weights
from regcollide.runs import MetricsLog, TrainState
from regcollide.training.config import Config, ConfigError, dump_config, instantiate, load_config
from regcollide.training.state import EpochSampler, RegularizerStates, TrainingDiverged, build_optimizer, learning_rate

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
# Test hook: SIGKILL this process right after the given optimizer step (the kill-and-resume test).
KILL_AT_STEP_ENV = "REGCOLLIDE_TEST_KILL_AT_STEP"


def subset(dataset, limit: int | None):
    """A fixed random subset of ``limit`` samples (sorted indices; a prefix could hold a single class)."""
    if not limit or limit >= len(dataset):
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
    return dataset.select(sorted(keep.tolist()))


def get_dataloaders(config: Config) -> tuple[DataLoader, DataLoader]:
    """Training loader (shuffled by (seed, epoch)) and test loader, both yielding the loader dict."""
    train_set, test_set = load_dataset(config.data.spec, "train"), load_dataset(config.data.spec, "test")
    train_set, test_set = subset(train_set, config.data.limit_train), subset(test_set, config.data.limit_test)
    # make_loader holds the images in memory; we keep its dataset but draw the order from EpochSampler,
    # whose permutation is a pure function of (seed, epoch), so a resumed run sees the same batches.
    in_memory = make_loader(train_set, batch_size=config.train.batch_size).dataset
    sampler = EpochSampler(len(in_memory), seed=config.seed)
    train_loader = DataLoader(in_memory, batch_size=config.train.batch_size, sampler=sampler,
                              num_workers=config.data.num_workers,
                              # Own generator: creating an iterator must not draw from the global RNG.
                              generator=torch.Generator().manual_seed(config.seed))
    test_loader = make_loader(test_set, batch_size=config.eval.batch_size, num_workers=config.data.num_workers)
    return train_loader, test_loader


@torch.no_grad()
def evaluate_accuracy(model, loader, accelerator: Accelerator) -> float:
    """Clean accuracy over the whole (sharded) test loader; duplicates from padding are dropped."""
    correct = total = 0
    with eval_mode(model):
        for batch in loader:
            preds = model(batch["image"]).argmax(dim=1)  # (B,)
            preds, labels = accelerator.gather_for_metrics((preds, batch["label"]))
            correct += int((preds == labels).sum())
            total += labels.numel()
    return correct / max(total, 1)


def regularizer_term(reg, model, batch, outputs) -> torch.Tensor:
    """The term, or NaN when its linear algebra fails (diverged weights): reported like a NaN loss."""
    try:
        return reg(model, batch, outputs)
    except torch.linalg.LinAlgError:
        return outputs.new_full((), float("nan"))


def training_step(model, raw_model, batch, regularizers, weights, names) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """Forward pass and total loss; returns (loss, logits (B, K), per-term values (1 + R,))."""
    outputs = model(batch["image"])  # (B, K)
    replaced = any(reg.replaces_task_loss for reg in regularizers)
    task = outputs.new_zeros(()) if replaced else F.cross_entropy(outputs, batch["label"])
    # Regularizers see the unwrapped module (layer names without DDP's "module." prefix); their gradients
    # still reach DDP's hooks because those hang on the parameters themselves.
    terms = [regularizer_term(reg, raw_model, batch, outputs) for reg in regularizers]
    loss = task + sum((w * t for w, t in zip(weights, terms)), outputs.new_zeros(()))
    values = torch.stack([task.detach().float()] + [t.detach().float().reshape(()) for t in terms])
    return loss, outputs, values


def term_names(config: Config) -> list[str]:
    """Regularizer names for the log, numbered when a name repeats (singular, singular_2)."""
    names: list[str] = []
    for rc in config.regularizers:
        count = sum(1 for n in names if n == rc.name or n.startswith(rc.name + "_"))
        names.append(rc.name if count == 0 else f"{rc.name}_{count + 1}")
    return names


def train_record(state, names: list[str], sums: list[float], lr: float) -> dict:
    """One metrics.jsonl line from the window sums (per-term sums, loss sum, correct, count)."""
    count = max(sums[-1], 1.0)
    record = {"event": "train", "epoch": state.epoch, "step": state.global_step, "lr": lr,
              "loss": sums[-3] / count, "train_acc": sums[-2] / count}
    record.update({f"term/{name}": total / count for name, total in zip(names, sums)})
    return record


def use_cpu(args: argparse.Namespace) -> bool:
    """CPU training when asked, or when launched on several processes with no accelerator device.

    `accelerate launch --multi_gpu` on a CPU-only machine starts the processes but accelerate only forms a
    gloo group (DistributedType.MULTI_CPU) when the Accelerator is told to use the CPU.
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return args.cpu or (distributed and not torch.accelerator.is_available())


def training_function(config: Config, args: argparse.Namespace) -> dict:
    if config.train.tensorboard and not is_tensorboard_available():
        raise ConfigError("train.tensorboard: the tensorboard package is not installed; "
                          "`pip install tensorboard` or set train.tensorboard=false")
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    set_seed(config.seed)  # before the model exists: identical initial weights on every process
    # Everything that can reject the config runs before the run folder (or a process group) exists.
    model, regularizers = instantiate(config)
    accelerator = Accelerator(cpu=use_cpu(args), mixed_precision=config.train.mixed_precision,
                              log_with="tensorboard" if config.train.tensorboard else None,
                              rng_types=[])  # the sampler is seeded by (seed, epoch): nothing to sync
    try:
        run_dir, resuming = runs.prepare_run_dir(config.out_dir, config.run_name, args.config_stem,
                                                        args.resume, args.overwrite, accelerator)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    config.out_dir, config.run_name = str(run_dir.parent), run_dir.name
    train_loader, test_loader = get_dataloaders(config)
    runs.create_run_dir(run_dir, dump_config(config), resuming, args.overwrite, accelerator)
    optimizer = build_optimizer(config.train, model)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    raw_model = accelerator.unwrap_model(model)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(RegularizerStates(regularizers))

    log = MetricsLog(run_dir / "metrics.jsonl", accelerator)
    if resuming:
        latest = runs.latest_training_state(run_dir)
        if latest is not None:
            accelerator.load_state(str(latest))
            accelerator.print(f"resumed from {latest} (epoch {state.epoch}, step {state.global_step})")
        log.truncate_after(state.global_step)  # lines after the checkpoint are replayed below
    if config.train.tensorboard:
        accelerator.project_configuration.set_directories(str(run_dir))
        accelerator.init_trackers("tensorboard", config={"seed": config.seed, "lr": config.train.lr})

    names = ["cross_entropy"] + term_names(config)
    weights = [rc.weight for rc in config.regularizers]
    steps_per_epoch = len(train_loader)
    total_steps = config.train.epochs * steps_per_epoch
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0"))
    window = torch.zeros(len(names) + 3)  # per-term sums, loss sum, correct, count (this process)
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=state.global_step, desc=run_dir.name, dynamic_ncols=True,
               disable=not (accelerator.is_main_process and config.train.progress))

    model.train()
    while state.epoch < config.train.epochs:
        loader = train_loader
        if state.step_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, state.step_in_epoch)
        # accelerate's loaders call set_epoch(their own iteration count) on the sampler when iterated; a
        # fresh skip-loader would count from 0, so pin the loader's count to the true epoch.
        loader.set_epoch(state.epoch)
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config.train, state.global_step, total_steps)
            loss, outputs, values = training_step(model, raw_model, batch, regularizers, weights, names)
            everywhere = accelerator.gather(values[None])  # (P, 1 + R): all processes stop together
            if not torch.isfinite(everywhere).all():
                bad = [name for name, ok in zip(names, torch.isfinite(everywhere).all(0).tolist()) if not ok]
                raise TrainingDiverged(bad, state.global_step, run_dir, dict(zip(names, values.tolist())))
            accelerator.backward(loss)
            if config.train.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            state.step_in_epoch += 1
            n = len(batch["label"])  # sample-weighted sums, so the logged means are over samples
            state.samples_seen += n
            state.shard_digest = (state.shard_digest * 1_000_003 + int(batch["index"].sum())) % (1 << 61)
            correct = float((outputs.argmax(1) == batch["label"]).sum())
            window += torch.cat([values.cpu() * n, torch.tensor([float(loss.detach()) * n, correct, n])])
            bar.update(1)
            if state.global_step % config.train.log_every == 0:
                sums = accelerator.reduce(window.to(accelerator.device), "sum").cpu().tolist()
                log.write(train_record(state, names, sums, optimizer.param_groups[0]["lr"]))
                window.zero_()
            if (config.train.checkpoint_every and state.global_step % config.train.checkpoint_every == 0
                    and state.step_in_epoch < steps_per_epoch):  # the epoch end saves its own state
                runs.save_training_state(accelerator, run_dir, state.global_step,
                                                config.train.keep_checkpoints)
            if kill_at and state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        state.epoch += 1
        state.step_in_epoch = 0
        test_acc = evaluate_accuracy(model, test_loader, accelerator) if config.eval.every_epoch else None
        log.write({"event": "epoch", "epoch": state.epoch, "step": state.global_step, "test_acc": test_acc})
        if test_acc is not None:
            bar.set_postfix(test_acc=f"{test_acc:.4f}")
        runs.save_training_state(accelerator, run_dir, state.global_step, config.train.keep_checkpoints)
    bar.close()
    train_seconds = time.perf_counter() - started

    accelerator.wait_for_everyone()
    for reg in reversed(regularizers):
        raw_model = reg.finalize(raw_model)  # drop training-only wrappers (e.g. spectral norm)
    digests = accelerator.gather_for_metrics([runs.weights_digest(raw_model)], use_gather_object=True)
    shards = accelerator.gather_for_metrics([[state.samples_seen, state.shard_digest]], use_gather_object=True)
    log.write({"event": "end", "step": state.global_step, "weights_sha256": digests, "shards": shards,
               "num_processes": accelerator.num_processes, "train_seconds": train_seconds})
    if accelerator.is_main_process:
        save_weights(raw_model, run_dir / "model.safetensors")
    accelerator.wait_for_everyone()
    results = final_evaluation(run_dir, config, accelerator) if config.eval.enabled else {}
    if accelerator.is_main_process:
        print_summary(run_dir, config, results, train_seconds)
    accelerator.end_training()
    return results


def final_evaluation(run_dir: Path, config: Config, accelerator: Accelerator) -> dict:
    """The eval entry of the finished run, written to results.json (same code as `regcollide eval`)."""
    from regcollide.evaluation.evaluate import evaluate_run
    from regcollide.io import write_json

    entry = evaluate_run(run_dir, config.eval.settings(), accelerator=accelerator,
                         progress=config.train.progress)
    if accelerator.is_main_process:
        write_json(entry, run_dir / "results.json")
    accelerator.wait_for_everyone()
    return entry


def print_summary(run_dir: Path, config: Config, results: dict, train_seconds: float) -> None:
    """A short table of the run's headline numbers."""
    regs = ", ".join(f"{r.name}x{r.weight:g}" for r in config.regularizers) or "none (ERM)"
    rows = [("run folder", str(run_dir)), ("model", f"{config.model.name} (width {config.model.width:g})"),
            ("data", config.data.spec), ("regularizers", regs), ("train time", f"{train_seconds:.1f} s")]
    if results.get("clean_acc") is not None:
        rows.append(("clean accuracy", f"{results['clean_acc']:.4f}"))
    pgd = results.get("pgd") or {}
    if pgd.get("robust_acc") is not None:
        rows.append((f"PGD robust acc ({pgd.get('norm')}, eps {pgd.get('eps')})", f"{pgd['robust_acc']:.4f}"))
    audit = results.get("audit") or {}
    if audit:
        rows.append(("audit nu / mu / n_weights", f"{audit.get('nu')} / {audit.get('mu')} / {audit.get('n_weights')}"))
        rows.append(("nullity(W1) / total nullity", f"{audit.get('first_nullity')} / {audit.get('total_nullity')}"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                        help="continue a run from its last complete checkpoint (default: the config's run folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--dry-run", action="store_true", help="validate the config, print it, and exit")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if an accelerator exists")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    """The config to train: a file (or the default), or a resumed run's own config.yaml; then --set."""
    if args.resume:  # an explicit run folder carries its resolved config
        path = Path(args.resume) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; pass a run folder")
        config = load_config(path, args.overrides)
        args.config_stem = config.run_name
        return config
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    args.config_stem = path.stem
    return load_config(path, args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = resolve_config(args)
        if args.dry_run:
            instantiate(config)  # reject unknown models and regularizers too
            print(dump_config(config), end="")
            return 0
        training_function(config, args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
