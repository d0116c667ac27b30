"""Resolve what the command line names (MODEL, optionally a run folder) into a model in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from regcollide.data import dataset_info
from regcollide.io import CheckpointError
from regcollide.models import create_model, default_geometry, is_external
from regcollide.runs import load_run


def resolve_model(model: str, checkpoint: str | None = None, data_spec: str | None = "mnist5k",
                  init_seed: int = 0) -> tuple[nn.Module, dict]:
    """What the CLI calls: a MODEL name, optionally with a run folder, -> (model in eval mode, info).

    ``info`` has ``name``, ``input_shape`` (C, H, W), ``num_classes`` (None for detection/segmentation
    defaults), ``data`` and ``checkpoint``. Registry models take their geometry from the dataset; timm and
    torchvision models keep their own (ImageNet) geometry, and data is adapted to it. A model without a
    checkpoint is built at a random init drawn from ``init_seed`` (the global RNG is left untouched).
    """
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
        data = dataset_info(data_spec)
        geometry = {"num_classes": data.num_classes, "in_chans": data.in_chans, "img_size": data.img_size}
    # Random init is seeded, so two audits or attacks of the same untrained MODEL report the same numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = create_model(model, **{k: v for k, v in geometry.items() if v is not None})
    info = {"name": model, "input_shape": (geometry["in_chans"], geometry["img_size"], geometry["img_size"]),
            "num_classes": geometry["num_classes"], "data": data_spec, "checkpoint": None}
    return net.eval(), info
