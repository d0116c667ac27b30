"""Resolve what the command line names (MODEL, optionally a run folder or weights) into a model in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from regcollide.data import dataset_info
from regcollide.io import CheckpointError
from regcollide.models import create_model, default_geometry, is_external
from regcollide.models.device import resolve_device
from regcollide.models.weights import load_weights_file
from regcollide.runs import load_run


def _from_run(model: str, checkpoint: str, data_spec: str | None) -> tuple[nn.Module, dict]:
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


def resolve_model(model: str, checkpoint: str | None = None, data_spec: str | None = "mnist5k",
                  init_seed: int = 0, weights: str | None = None, pretrained: bool = False,
                  device: str | None = "cpu") -> tuple[nn.Module, dict]:
    """What the CLI calls: MODEL, optionally with a run folder or a weights file -> (model in eval mode, info).

    ``info`` has ``name``, ``input_shape`` (C, H, W), ``num_classes`` (None for detection/segmentation
    defaults), ``data``, ``checkpoint``, ``weights`` and ``device``. Registry models and user factories take
    their geometry from the dataset; timm, torchvision and RobustBench models keep their own, and data is
    adapted to it. Without weights the model is a random init drawn from ``init_seed`` (the global RNG is
    left untouched). ``weights`` is a local file (any plain state dict, see
    :func:`regcollide.models.weights.load_weights_file`); ``pretrained`` downloads the library's weights.
    """
    target = resolve_device(device)
    if checkpoint:
        if weights or pretrained:
            raise CheckpointError("give either --checkpoint RUN or --weights/--pretrained, not both: a run "
                                  "folder already holds its weights.")
        net, info = _from_run(model, checkpoint, data_spec)
        return net.to(target).eval(), {**info, "weights": None, "device": str(target)}
    geometry = default_geometry(model)
    if not is_external(model) and data_spec:
        data = dataset_info(data_spec)
        geometry = {"num_classes": data.num_classes, "in_chans": data.in_chans, "img_size": data.img_size}
    # Random init is seeded, so two audits or attacks of the same untrained MODEL report the same numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = create_model(model, pretrained=pretrained and not weights,
                           **{k: v for k, v in geometry.items() if v is not None})
    if weights:
        load_weights_file(net, weights)
    info = {"name": model, "input_shape": (geometry["in_chans"], geometry["img_size"], geometry["img_size"]),
            "num_classes": geometry["num_classes"], "data": data_spec, "checkpoint": None,
            "weights": str(weights) if weights else ("pretrained" if pretrained else None),
            "device": str(target)}
    return net.to(target).eval(), info
