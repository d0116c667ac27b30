"""Run study jobs: one job = train + measure + write its entry. Scaled out by existing engines only.

- ``pool``: ``concurrent.futures.ProcessPoolExecutor`` (spawn, one torch thread per worker) on one machine;
- ``submitit``: one Slurm job per configuration through ``submitit.AutoExecutor`` (``local`` and ``debug``
  use submitit's LocalExecutor / DebugExecutor, which the tests exercise).

Every job writes ``<entries>/<name>.json`` atomically as its last act, with the job's hash. Results are
gathered from those files, never from return values, so a crashed or re-queued job is simply run again and
a job whose entry exists with a matching hash is skipped (unless ``fresh``).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from regcollide.io import read_json, write_json
from regcollide.study.design import Job, phases

EXECUTORS = ("pool", "submitit", "local", "debug")


def entry_path(entries: Path, job: Job) -> Path:
    return entries / f"{job.name}.json"


def is_done(entries: Path, job: Job) -> bool:
    """The job's entry exists and was made by exactly this job (same hash)."""
    path = entry_path(entries, job)
    if not path.is_file():
        return False
    try:
        return read_json(path).get("job", {}).get("hash") == job.hash
    except (ValueError, OSError):
        return False  # a torn or foreign file: run the job again


def run_job(job: Job, runs_dir: str, entries: str, threads: int = 1) -> str:
    """Train ``job`` (its run folder is rebuilt), measure it and write its entry; returns the entry path."""
    import torch

    from regcollide.data import load_tensors
    from regcollide.study.measure import measure
    from regcollide.study.train import train_job

    torch.set_num_threads(threads)  # a pool of one-thread workers beats one oversubscribed process
    start = time.perf_counter()
    model, record = train_job(job, Path(runs_dir))
    images, labels = load_tensors(job.data, "test", n=int(job.measure["n"]), seed=0)
    device = next(model.parameters()).device  # where the library loop left the model (a GPU when there is one)
    images, labels = images.to(device), labels.to(device)  # (N, C, H, W), (N,)
    outcomes, times = measure(model, images, labels, job.measure, job.autoattack, job.nullspace)
    record.pop("history")
    entry = {"job": job.to_dict(), "train": record, "outcomes": outcomes,
             "seconds": {"train": record["train_seconds"], **times, "total": round(time.perf_counter() - start, 2)}}
    return str(write_json(entry, entry_path(Path(entries), job)))


def _pool(todo: list[Job], runs_dir: Path, entries: Path, jobs: int, bar, deadline: float) -> None:
    if jobs == 1:
        for job in todo:
            if time.time() < deadline:
                run_job(job, str(runs_dir), str(entries))
                bar.update()
        return
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job, str(runs_dir), str(entries)): job for job in todo}
        for future in as_completed(futures):
            future.result()  # a failing job stops the study with its own error
            bar.update()
            if time.time() >= deadline:  # the time budget is spent: finish running jobs, start no more
                for pending in futures:
                    pending.cancel()


def _submitit(todo: list[Job], runs_dir: Path, entries: Path, kind: str, log_dir: Path, slurm: dict, bar) -> None:
    import submitit

    if kind == "local":
        executor = submitit.LocalExecutor(folder=str(log_dir))
    elif kind == "debug":
        executor = submitit.DebugExecutor(folder=str(log_dir))
    else:
        executor = submitit.AutoExecutor(folder=str(log_dir))
    executor.update_parameters(**({"timeout_min": 60} if kind != "submitit" else {"timeout_min": 60, **slurm}))
    with executor.batch():
        submitted = [executor.submit(run_job, job, str(runs_dir), str(entries)) for job in todo]
    for job in submitted:
        job.result()
        bar.update()


def run_jobs(jobs: list[Job], runs_dir: Path, entries: Path, executor: str = "pool", workers: int = 2,
             fresh: bool = False, log_dir: Path | None = None, slurm: dict | None = None,
             budget_minutes: float | None = None) -> dict:
    """Run every job not yet done (seed by seed, teachers before students); returns job counts.

    With ``budget_minutes`` (pool only) no job starts after the budget is spent; the jobs not run are
    counted in ``not_started`` and a later call runs them (their entries do not exist).
    """
    deadline = time.time() + 60 * budget_minutes if budget_minutes else float("inf")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    entries.mkdir(parents=True, exist_ok=True)
    todo_all = [j for j in jobs if fresh or not is_done(entries, j)]
    with tqdm(total=len(todo_all), desc="study jobs (train + measure)", unit="model") as bar:
        for phase in phases(todo_all):
            if time.time() >= deadline:
                break
            if executor == "pool":
                _pool(phase, runs_dir, entries, workers, bar, deadline)
            else:
                _submitit(phase, runs_dir, entries, executor, log_dir or runs_dir / "submitit", slurm or {}, bar)
    ran = sum(is_done(entries, j) for j in todo_all)
    return {"skipped": len(jobs) - len(todo_all), "run": ran, "not_started": len(todo_all) - ran}
