"""RobustBench models by id, ``rb:<dataset>/<threat>/<name>`` (Croce et al., NeurIPS 2021 Datasets and
Benchmarks, "RobustBench: a standardized adversarial robustness benchmark").

The architecture comes from the ``robustbench`` package's model zoo and builds offline. Its weights are
downloaded only on request (``pretrained=True``) into ``$TORCH_HOME/hub/robustbench/`` and read without
unpickling (RobustBench's own loader would call ``torch.load`` itself); a local file is loaded with
``--weights FILE``. RobustBench models take [0, 1] images and normalize inside, as ours do.
"""

from __future__ import annotations

import difflib
import importlib.resources
import sys
import types
from pathlib import Path

import torch
from torch import nn

from regcollide.io import CheckpointError
from regcollide.models.online import offline_error
from regcollide.models.weights import load_weights_file

# robustbench downloads from Google Drive; a TCP connect to it tells whether a download can start.
GDRIVE_PROBE_URL = "https://docs.google.com/"
GEOMETRY = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet": (1000, 224)}


def _pkg_resources_shim() -> None:
    """robustbench imports ``pkg_resources`` for one ``resource_filename`` call; setuptools >= 81 dropped
    that module, so provide the one function through ``importlib.resources`` when it is missing."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, path: str(importlib.resources.files(package) / path)
        sys.modules["pkg_resources"] = shim


def _autoattack_alias() -> None:
    """robustbench imports the official AutoAttack as ``autoattack``; its PyPI repackaging, ``pyautoattack``
    (the one we install), ships the same modules under another name, so register them under the original."""
    try:
        import autoattack  # noqa: F401
    except ImportError:
        import pyautoattack
        import pyautoattack.state

        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state


def _zoo():
    _pkg_resources_shim()
    _autoattack_alias()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts, BenchmarkDataset, ThreatModel


def parse(ident: str) -> tuple[str, str, str]:
    """``cifar10/Linf/Standard`` -> (dataset, threat, name), checked against the model zoo."""
    parts = ident.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"RobustBench id 'rb:{ident}' must be rb:<dataset>/<threat>/<name>, "
                         "e.g. rb:cifar10/Linf/Standard.")
    dataset, threat, name = parts
    zoo, datasets_enum, threats_enum = _zoo()
    known = {d.value: {t.value: list(models) for t, models in zoo[d].items()} for d in zoo}
    if dataset not in known:
        raise ValueError(f"unknown RobustBench dataset '{dataset}': use one of {', '.join(known)}.")
    if threat not in known[dataset]:
        raise ValueError(f"unknown RobustBench threat model '{threat}' for {dataset}: use one of "
                         f"{', '.join(known[dataset])}.")
    if name not in known[dataset][threat]:
        hint = difflib.get_close_matches(name, known[dataset][threat], n=3)
        close = f" Close matches: {', '.join(hint)}." if hint else ""
        raise ValueError(f"unknown RobustBench model '{name}' for {dataset}/{threat}.{close}")
    return dataset, threat, name


def geometry(ident: str) -> dict:
    dataset, _, _ = parse(ident)
    classes, size = GEOMETRY[dataset]
    return {"num_classes": classes, "in_chans": 3, "img_size": size}


def _entry(dataset: str, threat: str, name: str) -> dict:
    zoo, datasets_enum, threats_enum = _zoo()
    return zoo[datasets_enum(dataset)][threats_enum(threat)][name]


def weights_path(dataset: str, threat: str, name: str) -> Path:
    """Where a requested download is stored (and looked for first)."""
    return Path(torch.hub.get_dir()) / "robustbench" / dataset / threat / f"{name}.pt"


def _download(ident: str, gdrive_id: str, path: Path) -> None:
    from robustbench.utils import download_gdrive

    from regcollide.data.network import reachable  # imports `datasets` (seconds): only for a download

    if not reachable(GDRIVE_PROBE_URL):
        raise offline_error(f"rb:{ident}", "RobustBench's download host cannot be reached")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    download_gdrive(gdrive_id, partial)
    partial.replace(path)  # a finished download appears atomically; an interrupted one is never read


def create_robustbench(ident: str, pretrained: bool = False) -> nn.Module:
    """The RobustBench model ``ident`` (``<dataset>/<threat>/<name>``) at random init, or with its weights."""
    dataset, threat, name = parse(ident)
    entry = _entry(dataset, threat, name)
    if isinstance(entry.get("gdrive_id"), list):
        raise CheckpointError(f"rb:{ident} is an ensemble of several networks; regcollide audits and attacks "
                              "single networks.")
    try:
        model = entry["model"]()
    except OSError as err:  # some ImageNet entries fetch torchvision weights while building
        raise offline_error(f"rb:{ident}", f"its architecture fetches weights while building ({err})") from err
    if pretrained:
        path = weights_path(dataset, threat, name)
        if not path.is_file():
            _download(ident, entry["gdrive_id"], path)
        load_weights_file(model, path)
    return model


def list_ids(dataset: str = "cifar10", threat: str = "Linf") -> list[str]:
    zoo, datasets_enum, threats_enum = _zoo()
    return [f"{dataset}/{threat}/{name}" for name in zoo[datasets_enum(dataset)][threats_enum(threat)]]
