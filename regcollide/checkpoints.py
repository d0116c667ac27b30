"""Run folders: the resolved config plus safetensors weights, with safe and checked loading.

A run folder holds ``config.yaml``, ``model.safetensors``, ``metrics.jsonl``, ``results.json`` and the
accelerate state used for resuming. Nothing here unpickles arbitrary objects: weights are read with
safetensors (or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE, WEIGHTS_FILE = "config.yaml", "model.safetensors"


class CheckpointError(ValueError):
    """A run folder or weights file that cannot be used; the message says what is wrong."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Save ``model``'s state dict as safetensors, atomically."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` strictly; on any mismatch raise one error naming the mismatched layers."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("shape mismatch", shapes), ("missing in checkpoint", missing),
                             ("not in model", unexpected)):
            if items:
                shown = ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source} does not fit this architecture; " + "; ".join(parts) +
                              ". Check the model name and width in the run's config.yaml.")
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load safetensors (or a ``torch.save`` state dict, with ``weights_only=True``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    load_state_dict_checked(model, state, source=str(path))
    return model


def read_run_config(run_dir: str | os.PathLike) -> dict:
    run = Path(run_dir)
    config_path = run / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"'{run}' is not a run folder: no {CONFIG_FILE}. Pass a folder written by "
                              "train/regularized.py.")
    with open(config_path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config.get("model"), dict) or "name" not in config["model"]:
        raise CheckpointError(f"{config_path} has no 'model.name'.")
    return config


def build_model_from_config(config: dict) -> nn.Module:
    from regcollide.models import create_model

    spec = dict(config["model"])
    name = spec.pop("name")
    return create_model(name, **{k: v for k, v in spec.items() if v is not None})


def load_run(run_dir: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model from ``config.yaml`` and load ``model.safetensors``; returns (model in eval mode, config)."""
    config = read_run_config(run_dir)
    model = build_model_from_config(config)
    load_weights(model, Path(run_dir) / WEIGHTS_FILE)
    return model.eval(), config


def resolve_model(model: str, checkpoint: str | None = None, data_spec: str | None = "mnist5k") -> tuple[nn.Module, dict]:
    """What the CLI calls: a MODEL name, optionally with a run folder, -> (model in eval mode, info).

    ``info`` has ``name``, ``input_shape`` (C, H, W), ``num_classes`` (None for detection/segmentation
    defaults), ``data`` and ``checkpoint``. Registry models take their geometry from the dataset; timm and
    torchvision models keep their own (ImageNet) geometry, and data is adapted to it.
    """
    from regcollide.models import create_model, default_geometry, is_external

    if checkpoint:
        net, config = load_run(checkpoint)
        trained = config["model"]["name"]
        if model and model != trained:
            raise CheckpointError(f"run '{checkpoint}' holds a '{trained}' model, not '{model}': "
                                  f"pass MODEL as '{trained}'.")
        spec = config["model"]
        geometry = default_geometry(trained)
        in_chans = spec.get("in_chans") or geometry["in_chans"]
        img_size = spec.get("img_size") or geometry["img_size"]
        info = {"name": trained, "input_shape": (in_chans, img_size, img_size),
                "num_classes": spec.get("num_classes") or geometry["num_classes"],
                "data": (config.get("data") or {}).get("spec", data_spec), "checkpoint": str(checkpoint)}
        return net, info
    geometry = default_geometry(model)
    if not is_external(model) and data_spec:
        from regcollide.data import dataset_info

        data = dataset_info(data_spec)
        geometry = {"num_classes": data.num_classes, "in_chans": data.in_chans, "img_size": data.img_size}
    net = create_model(model, **{k: v for k, v in geometry.items() if v is not None})
    info = {"name": model, "input_shape": (geometry["in_chans"], geometry["img_size"], geometry["img_size"]),
            "num_classes": geometry["num_classes"], "data": data_spec, "checkpoint": None}
    return net.eval(), info
