"""Train one study job in-process, to a stated convergence criterion, into a regular run folder.

The study trains ~100 small models, so it avoids a subprocess and an accelerate state per model: the
loop below is plain PyTorch around the library's own pieces (``instantiate`` builds the model and the
regularizers exactly as ``train/regularized.py`` does; the run folder holds ``config.yaml`` and
``model.safetensors``, so ``regcollide eval <run>`` and ``load_run`` read it like any other run).

Convergence criterion (stated in the pre-registration): train for at least ``min_epochs`` and stop at the
first epoch whose mean training loss improved by less than ``rel_tol`` (relative) over the best earlier
epoch, or whose training accuracy reached ``target_acc``; at most ``max_epochs``. The loss is the full
training objective (task loss plus weighted regularizer terms).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from regcollide.data import load_tensors
from regcollide.io import atomic_write_bytes, save_weights
from regcollide.study.design import Job
from regcollide.training.config import dump_config, from_dict, instantiate

RUN_MARKER = ".regcollide-run"  # the run-folder marker of regcollide.runs: the folder may be replaced


def job_config(job: Job, runs_dir: Path) -> dict:
    """The training config of a job (the ``config.yaml`` schema of ``regcollide.training.config``)."""
    regs = []
    for reg in job.regularizers:
        params = dict(reg["params"])
        if reg["name"] == "distill":
            params["teacher"] = str(runs_dir / job.teacher)
        regs.append({"name": reg["name"], "weight": reg["weight"], "params": params})
    train = job.train
    return {"model": dict(job.model), "data": {"spec": job.data}, "seed": job.seed, "regularizers": regs,
            "train": {"epochs": int(train.get("max_epochs", 20)), "batch_size": int(train.get("batch_size", 128)),
                      "lr": float(train.get("lr", 1e-3)), "optimizer": "adam", "progress": False,
                      "num_threads": 1},
            "eval": {"enabled": False}, "out_dir": str(runs_dir.name), "run_name": job.name}


def _epoch(model, regularizers, weights, images, labels, order, batch_size, optimizer) -> tuple[float, float]:
    """One pass in ``order``; returns (mean objective, training accuracy)."""
    replaced = any(r.replaces_task_loss for r in regularizers)
    total = correct = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {"image": images[idx], "label": labels[idx], "index": idx}
        outputs = model(batch["image"])  # (B, K)
        loss = outputs.new_zeros(()) if replaced else F.cross_entropy(outputs, batch["label"])
        for reg, w in zip(regularizers, weights):
            loss = loss + w * reg(model, batch, outputs)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is not finite at sample {start}; lower the lr or weight")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        correct += float((outputs.argmax(1) == batch["label"]).sum())
    return total / len(order), correct / len(order)


def train_job(job: Job, runs_dir: Path) -> tuple[torch.nn.Module, dict]:
    """Train ``job`` into ``runs_dir/<name>``; returns (trained model in eval mode, training record)."""
    config = from_dict(job_config(job, runs_dir))
    torch.manual_seed(job.seed)  # the initial weights depend on the seed only
    model, regularizers = instantiate(config)
    images, labels = load_tensors(job.data, "train")  # (N, C, H, W), (N,)
    weights = [r.weight for r in config.regularizers]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    crit, gen = job.train, torch.Generator().manual_seed(job.seed)
    history, best, started = [], float("inf"), time.perf_counter()
    model.train()
    for epoch in range(int(crit.get("max_epochs", 20))):
        order = torch.randperm(len(labels), generator=gen)
        loss, acc = _epoch(model, regularizers, weights, images, labels, order, config.train.batch_size, opt)
        history.append({"epoch": epoch + 1, "loss": loss, "train_acc": acc})
        small_gain = loss > best * (1 - float(crit.get("rel_tol", 0.02)))
        best = min(best, loss)
        if epoch + 1 >= int(crit.get("min_epochs", 3)) and (small_gain or acc >= float(crit.get("target_acc", 1.0))):
            break
    for reg in reversed(regularizers):
        model = reg.finalize(model)
    record = {"epochs": len(history), "final_loss": history[-1]["loss"], "final_train_acc": history[-1]["train_acc"],
              "converged": len(history) < int(crit.get("max_epochs", 20)),
              "train_seconds": round(time.perf_counter() - started, 2), "history": history}
    _write_run(runs_dir / job.name, config, model, record)
    return model.eval(), record


def _write_run(run: Path, config, model, record: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    marker = run / RUN_MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"created": time.time(), "by": "regcollide.study"}) + "\n")
    atomic_write_bytes(run / "config.yaml", dump_config(config).encode())
    atomic_write_bytes(run / "train.json", json.dumps(record, indent=1).encode())
    save_weights(model, run / "model.safetensors")
