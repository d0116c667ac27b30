"""Run folders for the evaluation tests: config.yaml + model.safetensors, as training writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml


def make_run(folder: Path, name: str = "mlp", width: float = 0.25, steps: int = 50, seed: int = 0,
             regularizers: list | None = None) -> Path:
    """A run folder as training writes it: config.yaml + model.safetensors (a few Adam steps)."""
    from regcollide.data import load_tensors
    from regcollide.io import save_weights
    from regcollide.models import create_model

    torch.manual_seed(seed)
    model = create_model(name, width=width)
    x, y = load_tensors("mnist5k", "train", n=512)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(steps):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(y)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder.mkdir(parents=True)
    config = {"model": {"name": name, "width": width, "num_classes": 10, "in_chans": 1, "img_size": 28},
              "data": {"spec": "mnist5k"}, "seed": seed, "regularizers": regularizers or [],
              "train": {"epochs": 1}, "eval": {"n": 10}, "out_dir": str(folder.parent), "run_name": folder.name}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    save_weights(model, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "mlp-q", regularizers=[{"name": "singular",
                                                                                   "weight": 0.1, "params": {}}])


@pytest.fixture(scope="session")
def make_run_folder():
    """The :func:`make_run` factory, for tests that need more run folders."""
    return make_run
