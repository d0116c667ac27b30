#!/usr/bin/env python
"""Train a model with collision regularizers on one process or many (Hugging Face ``accelerate``).

    python train/regularized.py                                  # configs/default.yaml
    python train/regularized.py configs/singular.yaml --set train.epochs=3
    accelerate launch --multi_gpu --num_processes 2 train/regularized.py configs/erm.yaml
    python train/regularized.py --resume runs/default            # continue from the last complete state

Shaped like accelerate's ``examples/nlp_example.py``: ``get_dataloaders`` -> ``training_function(config,
args)`` -> a thin ``main``. The loop itself is the library's ``regcollide.training.train``; this file only
parses the command line, builds the Accelerator and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from accelerate import Accelerator

from regcollide.io import CONFIG_FILE, CheckpointError
from regcollide.runs import RunFolderError
from regcollide.training.callbacks import Callback
from regcollide.training.config import Config, ConfigError, dump_config, instantiate, load_config, resolve
from regcollide.training.data import get_dataloaders
from regcollide.training.launch import make_accelerator
from regcollide.training.loop import RunResult, train
from regcollide.training.state import TrainingDiverged

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def training_function(config: Config, args: argparse.Namespace, callbacks: Sequence[Callback] = ()) -> RunResult:
    """Validate, build the Accelerator and the loaders, and run the library loop."""
    resolve(config)  # names, dataset and trackers checked before the data loads; train() checks the rest
    accelerator: Accelerator = make_accelerator(config, cpu=args.cpu)
    result = train(config, accelerator=accelerator, callbacks=callbacks, dataloaders=get_dataloaders(config),
                   resume=args.resume_dir, overwrite=args.overwrite, default_name=args.config_stem)
    if accelerator.is_main_process and result.completed:
        print_summary(result.run_dir, config, result.results, result.train_seconds)
    return result


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
    """The config to train: a file (or the default), or a resumed run's own config.yaml; then --set.

    Sets ``args.resume_dir`` (the run folder to continue, or None) and ``args.config_stem``.
    """
    args.resume_dir = None
    if args.resume:  # an explicit run folder carries its resolved config
        path = Path(args.resume) / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; pass a run folder")
        config = load_config(path, args.overrides)
        args.resume_dir, args.config_stem = Path(args.resume), Path(args.resume).name
        return config
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    args.config_stem = path.stem
    config = load_config(path, args.overrides)
    if args.resume == "":  # bare --resume: the config's own run folder, if it exists
        own = Path(config.out_dir) / (config.run_name or args.config_stem)
        if (own / CONFIG_FILE).is_file():
            args.resume_dir = own
            return load_config(own / CONFIG_FILE, args.overrides)
        config.run_name = config.run_name or args.config_stem
    return config


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """The command line; ``callbacks`` lets a wrapper (e.g. a fault-injection test) hook into the loop."""
    args = parse_args(argv)
    try:
        config = resolve_config(args)
        if args.dry_run:
            instantiate(config)  # reject unknown models and regularizers too
            print(dump_config(config), end="")
            return 0
        training_function(config, args, callbacks)
    except (ConfigError, RunFolderError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a full disk or a read-only folder while writing the run folder
        print(f"error: {err}; earlier states in the run folder are intact", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
