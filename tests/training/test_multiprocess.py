"""Two processes on CPU (`accelerate launch --multi_gpu --num_processes 2`, gloo, MULTI_CPU).

Each process trains on its own shard of every batch list (accelerate's BatchSamplerShard) and DDP averages
the gradients, so both end with the same weights. The script logs, per process, a SHA-256 of its final
weights and (samples seen, a digest of the sample indices it trained on) in metrics.jsonl's end line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "train" / "regularized.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_shards_and_agree(tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    tiny = ["--set", "model.width=0.125", "--set", "data.limit_train=200", "--set", "data.limit_test=100",
            "--set", "train.batch_size=20", "--set", "train.epochs=2", "--set", "train.progress=false",
            "--set", "eval.parts=[clean]", "--set", f"out_dir={tmp_path}", "--set", "run_name=mp",
            "--set", "regularizers=[{name: singular, weight: 0.1}, "
                     "{name: decorrelation, weight: 0.1, params: {max_rows: 16}}]"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([*launch, str(SCRIPT), *tiny], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    run_dir = tmp_path / "mp"
    end = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end" and end["num_processes"] == 2
    first, second = end["weights_sha256"]
    assert first == second, "the two processes finished with different weights"
    (seen_0, digest_0), (seen_1, digest_1) = end["shards"]
    # 200 samples in 10 batches of 20 per epoch: 5 batches (100 samples) per process per epoch.
    assert seen_0 == seen_1 == 200
    assert digest_0 != digest_1, "both processes trained on the same batches"
    # One run folder, written once, with the 2-process run's results.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_name"] == "mp"
    results = json.loads((run_dir / "results.json").read_text())
    assert 0.0 <= results["clean_acc"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mp"]
