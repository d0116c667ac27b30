"""Resumable training states, written and read without pickle.

A run folder keeps its states under ``state/``: one complete ``step_NNNNNNNN`` folder per checkpoint and a
``latest`` file naming the newest. A state is written into a hidden ``.tmp-step_N`` folder and renamed into
place only when every process has written its files; ``latest`` is replaced atomically afterwards and older
states are deleted last, so a crash (or a full disk) at any point leaves the previous state intact.

One state folder holds (P = number of processes, r = process index)::

    model.safetensors          unwrapped model weights (safetensors)
    optimizer.bin              optimizer state dict (torch.save; read with weights_only=True)
    regularizers.safetensors   regularizer tensors and generator states; regularizers.json: the rest
    progress_r.json            step counters of process r (JSON)
    rng_r.safetensors          python / numpy / torch RNG states of process r, as tensors
    meta.json                  step, number of processes, format; written last

The reader accepts exactly these names. Anything else (``custom_checkpoint_0.pkl``, accelerate's RNG
pickles) makes the state unusable: it is reported in one line and never opened.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from regcollide.io import CheckpointError, atomic_write_bytes, load_state_dict_checked, read_state_dict
from regcollide.runs import RUN_MARKER
from regcollide.training.state import RegularizerStates, TrainState

STATE_DIR, LATEST_FILE, META_FILE = "state", "latest", "meta.json"
FORMAT = 1
_MAIN_FILES = {"model.safetensors", "optimizer.bin", "regularizers.safetensors", "regularizers.json", META_FILE}
_RANK_FILE = re.compile(r"(progress_\d+\.json|rng_\d+\.safetensors)")


class StateSaveError(CheckpointError):
    """Writing a state failed (e.g. a full disk); the previous state is intact."""


@dataclass
class Resumable:
    """Everything a state restores: the unwrapped model, the optimizer, regularizer state and counters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    regularizers: RegularizerStates
    progress: TrainState


def state_name(step: int) -> str:
    return f"step_{step:08d}"


# ---------------------------------------------------------------- tensors and JSON, never pickle


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested dicts/lists/tuples of tensors and plain values -> JSON tree; tensors go to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{prefix}/k{i}", tensors), _split(v, f"{prefix}/{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state")


def _join(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict):  # keys come back hashable: a tuple key was stored as a list
        return {_hashable(_join(k, tensors)): _join(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, list):
        return [_join(v, tensors) for v in tree]
    return tree


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def rng_tensors() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors: torch CPU (and CUDA), numpy's MT19937, python's ``random``."""
    version, words, gauss = random.getstate()  # (3, 625 ints, float | None)
    _, keys, pos, has_gauss, cached = np.random.get_state()  # ('MT19937', (624,) uint32, int, int, float)
    out = {"torch": torch.get_rng_state(),
           "python": torch.tensor(words, dtype=torch.int64),
           "python_extra": torch.tensor([version, float("nan") if gauss is None else gauss], dtype=torch.float64),
           "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
           "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64)}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_tensors(state: dict[str, torch.Tensor]) -> None:
    version, gauss = state["python_extra"].tolist()
    random.setstate((int(version), tuple(state["python"].tolist()), None if gauss != gauss else gauss))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss),
                         cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------- writing


def _state_files(obj: Resumable, rank: int, main: bool) -> dict[str, bytes]:
    """File name -> bytes of this process's part of a state."""
    files = {f"progress_{rank}.json": json.dumps(obj.progress.state_dict()).encode(),
             f"rng_{rank}.safetensors": save_safetensors(rng_tensors())}
    if main:
        weights = {k: v.detach().cpu().contiguous() for k, v in obj.model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(obj.optimizer.state_dict(), buffer)
        tensors: dict[str, torch.Tensor] = {}
        tree = _split(obj.regularizers.state_dict(), "r", tensors)
        files.update({"model.safetensors": save_safetensors(weights), "optimizer.bin": buffer.getvalue(),
                      "regularizers.safetensors": save_safetensors(tensors),
                      "regularizers.json": json.dumps(tree).encode()})
    return files


def write_file(path: Path, data: bytes) -> None:
    """One state file (a seam for fault-injection tests: a full disk raises OSError here)."""
    atomic_write_bytes(path, data)


def save_state(accelerator, run_dir: str | Path, obj: Resumable, keep: int = 2) -> Path:
    """Write ``obj`` into ``run_dir/state/step_N`` atomically; every process must call this.

    Keeps the ``keep`` newest states. Raises :class:`StateSaveError` (on every process) if any process
    could not write, after removing the partial folder; the previous state stays the newest.
    """
    step = obj.progress.global_step
    root = _state_root(run_dir)
    final, tmp = root / state_name(step), root / f".tmp-{state_name(step)}"
    problem = ""
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
            tmp.mkdir()
        except OSError as err:
            problem = str(err)
    accelerator.wait_for_everyone()
    if not problem:
        try:
            for name, data in _state_files(obj, accelerator.process_index, accelerator.is_main_process).items():
                write_file(tmp / name, data)
        except OSError as err:
            problem = " ".join(str(err).split())
    failed = accelerator.gather(torch.tensor([float(bool(problem))], device=accelerator.device))  # (P,)
    if failed.any():
        _abandon(accelerator, tmp, root, step, problem)
    if accelerator.is_main_process:
        meta = {"format": FORMAT, "step": step, "num_processes": accelerator.num_processes}
        write_file(tmp / META_FILE, json.dumps(meta).encode())
        _remove(final)  # a stale state of the same step from an earlier attempt
        os.replace(tmp, final)
        atomic_write_bytes(root / LATEST_FILE, (final.name + "\n").encode())
        for old in list_states(run_dir)[:-keep]:
            _remove(old)
    accelerator.wait_for_everyone()
    return final


def _abandon(accelerator, tmp: Path, root: Path, step: int, problem: str) -> None:
    if accelerator.is_main_process:
        _remove(tmp)
    accelerator.wait_for_everyone()
    previous = latest_state(root.parent)
    kept = f"the previous state {previous} is intact" if previous else "no earlier state exists"
    raise StateSaveError(f"could not save the training state at step {step} ({problem or 'another process failed'}); "
                         f"{kept}. Free disk space, then --resume {root.parent}")


# ---------------------------------------------------------------- finding and reading


def list_states(run_dir: str | Path) -> list[Path]:
    """State folders in step order (hidden temporary folders are never listed)."""
    root = Path(run_dir) / STATE_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step_\d{8}", p.name))


def latest_state(run_dir: str | Path) -> Path | None:
    """The state named by ``state/latest``, or the newest one if the pointer is missing or dangling."""
    root = Path(run_dir) / STATE_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if re.fullmatch(r"step_\d{8}", name) and (root / name).is_dir():
            return root / name
    states = list_states(run_dir)
    return states[-1] if states else None


def remove_partial_states(run_dir: str | Path) -> None:
    """Delete temporary state folders left by a crash mid-save."""
    root = _state_root(run_dir)
    if root.is_dir():
        for tmp in root.glob(".tmp-step_*"):
            _remove(tmp)


def _state_root(run_dir: str | Path) -> Path:
    """``run_dir/state``, only for a run folder that carries our marker: states are deleted as they rotate,
    and nothing may ever be deleted outside a folder regcollide created and marked."""
    if not (Path(run_dir) / RUN_MARKER).is_file():
        raise StateSaveError(f"{run_dir} is not a run folder created by regcollide (no {RUN_MARKER}); "
                             "training states are written only into claimed run folders")
    return Path(run_dir) / STATE_DIR


def _remove(state: Path) -> None:
    """Delete one state folder of ``run_dir/state`` (never a symlink, never outside that folder)."""
    if state.is_symlink():
        state.unlink()
    elif state.is_dir() and state.parent.name == STATE_DIR:
        shutil.rmtree(state, ignore_errors=True)


def read_meta(state_dir: Path) -> dict:
    """``meta.json`` of a state, checked; :class:`CheckpointError` if it is missing or malformed."""
    try:
        meta = json.loads((state_dir / META_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"no readable {META_FILE} ({type(err).__name__})") from None
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT and isinstance(meta.get("step"), int)
            and isinstance(meta.get("num_processes"), int)):
        raise CheckpointError(f"{META_FILE} is not a format-{FORMAT} state description")
    return meta


def _check_names(state_dir: Path) -> None:
    for path in state_dir.iterdir():
        if path.name not in _MAIN_FILES and not _RANK_FILE.fullmatch(path.name):
            raise CheckpointError(f"unexpected file {path.name} (never opened: states hold no pickles)")


def _read_optimizer(path: Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path.name} unreadable ({' '.join(str(err).split())[:160]})") from None
    if not isinstance(state, dict) or not {"state", "param_groups"} <= state.keys():
        raise CheckpointError(f"{path.name} is not an optimizer state dict")
    return state


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(path.read_bytes())
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path.name} unreadable ({' '.join(str(err).split())[:160]})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path.name} unreadable ({type(err).__name__})") from None


def load_state(state_dir: Path, obj: Resumable, rank: int) -> None:
    """Read every file of one state, then restore ``obj`` from it; :class:`CheckpointError` if unusable."""
    _check_names(state_dir)
    read_meta(state_dir)
    weights = read_state_dict(state_dir / "model.safetensors")
    optimizer = _read_optimizer(state_dir / "optimizer.bin")
    regularizers = _join(_read_json(state_dir / "regularizers.json"),
                         _read_tensors(state_dir / "regularizers.safetensors"))
    progress = _read_json(state_dir / f"progress_{rank}.json")
    rng = _read_tensors(state_dir / f"rng_{rank}.safetensors")
    try:
        load_state_dict_checked(obj.model, weights, source="model.safetensors")
        obj.optimizer.load_state_dict(optimizer)
        obj.regularizers.load_state_dict(regularizers)
        obj.progress.load_state_dict(progress)
        set_rng_tensors(rng)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"does not fit this run ({' '.join(str(err).split())[:160]})") from None


def restore_newest(run_dir: str | Path, obj: Resumable, rank: int, say: Callable[[str], None]) -> Path | None:
    """Restore the newest usable state, falling back over unusable ones (each reported in one line).

    Returns the state restored, or None when the run has no state yet (it restarts from step 0). Raises
    :class:`CheckpointError` when states exist but none is usable.
    """
    newest = latest_state(run_dir)
    candidates = sorted(set(list_states(run_dir)) | ({newest} if newest else set()), reverse=True)
    if newest in candidates:  # the pointer first, then the others newest first
        candidates.remove(newest)
        candidates.insert(0, newest)
    for i, state_dir in enumerate(candidates):
        try:
            load_state(state_dir, obj, rank)
            return state_dir
        except CheckpointError as err:
            after = f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates) else "no older state"
            say(f"warning: state {state_dir.name} is unusable: {err}; {after}")
    if candidates:
        raise CheckpointError(f"no usable training state in {Path(run_dir) / STATE_DIR}; start a new run with "
                              "--overwrite or another run_name")
    return None
