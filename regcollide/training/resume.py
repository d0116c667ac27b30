"""What a resumed run may change: settings that alter the model or the data order are refused.

A resumed run must replay the same batches into the same architecture, so the saved ``config.yaml`` and
the requested config must agree on every model and data key (except ``data.num_workers``), the batch
size, the seed and the number of processes. Everything else (epochs, eval settings,
logging, ...) may change and is resumed exactly. Every check runs before anything in the folder changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regcollide.io import CONFIG_FILE
from regcollide.runs import read_run_config
from regcollide.training.checkpoint import list_states, read_meta
from regcollide.training.config import Config, ConfigError, to_dict

FROZEN_SECTIONS = ("model", "data")
FROZEN_KEYS = ("seed", "train.batch_size")
MAY_CHANGE = ("data.num_workers",)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def frozen_conflicts(saved: dict, config: Config) -> list[str]:
    """Keys whose value differs between the saved run config and ``config``, in sorted order."""
    old, new = _flat(saved), _flat(to_dict(config))

    def frozen(key: str) -> bool:
        return (key.split(".")[0] in FROZEN_SECTIONS or key in FROZEN_KEYS) and key not in MAY_CHANGE

    return sorted(k for k in set(old) | set(new) if frozen(k) and old.get(k) != new.get(k))


def check_resume_config(run_dir: Path, config: Config) -> None:
    """Refuse, in one line naming the key, a resume that would change the model or the data order."""
    saved = read_run_config(run_dir)
    conflicts = frozen_conflicts(saved, config)
    if conflicts:
        key = conflicts[0]
        old, new = _flat(saved).get(key), _flat(to_dict(config)).get(key)
        raise ConfigError(f"{key}: cannot change on --resume ({old!r} in {run_dir / CONFIG_FILE}, {new!r} "
                          "requested); it changes the model or the data order. Start a new run instead")


def check_resume_processes(run_dir: Path, num_processes: int) -> None:
    """Refuse a resume on a different number of processes (each process's data shard would change)."""
    for state in list_states(run_dir):
        try:
            saved = read_meta(state)["num_processes"]
        except ValueError:
            continue  # an unreadable state is reported (and skipped) when states are restored
        if saved != num_processes:
            raise ConfigError(f"num_processes: the run was trained on {saved} process(es), this launch has "
                              f"{num_processes}; relaunch with --num_processes {saved}")
