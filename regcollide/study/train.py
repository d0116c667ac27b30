"""Train one study job through the library loop (``regcollide.training.loop.train``) into an ordinary run folder.

The study calls the same loop as ``train/regularized.py``: :func:`job_config` writes the job as a training
config (``config.yaml`` schema), and ``train(config, callbacks=[Converged(...)])`` trains it, so the run
folder is a regular run (``load_run`` and ``regcollide eval`` read it; the same config and seed give the same
weights as ``regcollide.train``). What a ~100-model study does not need is switched off through the config,
not by a second loop: no end-of-run evaluation (the study measures the model itself), no per-epoch test
accuracy, no resumable states (a crashed job is cheaper to rerun than to resume), no progress bar per model.

Convergence criterion (stated in the pre-registration): train for at least ``min_epochs`` epochs and stop at
the first epoch whose training accuracy reached ``target_acc``, or at which the training objective (task
loss plus weighted regularizer terms) plateaued: the best mean objective of the last ``window`` epochs is
less than ``rel_tol`` (relative) below the best of all earlier epochs. A run that reaches ``max_epochs``
without either is recorded as not converged.
"""

from __future__ import annotations

from pathlib import Path

from regcollide.study.design import Job
from regcollide.training.callbacks import Converged
from regcollide.training.config import Config, from_dict
from regcollide.training.loop import train


def job_config(job: Job, runs_dir: Path) -> Config:
    """The training config of a job (the ``config.yaml`` schema of ``regcollide.training.config``)."""
    regs = []
    for reg in job.regularizers:
        params = dict(reg["params"])
        if reg["name"] == "distill":
            params["teacher"] = str(runs_dir / job.teacher)
        regs.append({"name": reg["name"], "weight": reg["weight"], "params": params})
    t = job.train
    return from_dict({
        "model": dict(job.model), "data": {"spec": job.data}, "seed": job.seed, "regularizers": regs,
        "train": {"epochs": int(t.get("max_epochs", 20)), "batch_size": int(t.get("batch_size", 128)),
                  "lr": float(t.get("lr", 1e-3)), "optimizer": "adam", "schedule": "constant",
                  "weight_decay": float(t.get("weight_decay", 0.0)), "progress": False, "num_threads": 1,
                  "save_states": False, "log_every": 1000},
        "eval": {"enabled": False, "every_epoch": False}, "out_dir": str(runs_dir), "run_name": job.name})


def convergence(job: Job) -> Converged:
    """The study's stopping rule for ``job`` (see the module doc)."""
    t = job.train
    return Converged(min_epochs=int(t.get("min_epochs", 3)), rel_tol=float(t.get("rel_tol", 0.01)),
                     target_acc=float(t.get("target_acc", 1.0)), window=int(t.get("window", 1)))


def train_job(job: Job, runs_dir: Path) -> tuple:
    """Train ``job`` into ``runs_dir/<name>`` (replacing an earlier run folder of the job).

    Returns (trained model in eval mode, training record: epochs, final objective and training accuracy,
    whether the stopping rule fired before ``max_epochs``, seconds, per-epoch history).
    """
    stop = convergence(job)
    config = job_config(job, runs_dir)
    result = train(config, callbacks=[stop], overwrite=True)
    last = stop.history[-1]
    record = {"epochs": len(stop.history), "final_loss": last["epoch_loss"],
              "final_train_acc": last["epoch_train_acc"], "converged": stop.fired,
              "stopped_by": stop.reason, "train_seconds": round(result.train_seconds, 2),
              "history": [{"epoch": h["epoch"], "loss": h["epoch_loss"], "train_acc": h["epoch_train_acc"]}
                          for h in stop.history]}
    return result.model, record
