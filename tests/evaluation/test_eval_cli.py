"""`regcollide eval` on hostile input: one line each, no traceback, the other runs still evaluated."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from regcollide.cli import main

FAST = ["--parts", "clean", "--n", "20", "--no-progress"]


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_a_broken_run_in_the_middle_is_reported_and_the_others_evaluated(run, tmp_path):
    good_2 = tmp_path / "good-2"
    shutil.copytree(run, good_2)
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])  # truncated by a crash
    missing = tmp_path / "not-a-run"
    missing.mkdir()
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", str(run), str(broken), str(missing), str(good_2), "--out", str(out),
                                       *FAST])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{run.name}.json", "good-2.json"])
    errors = [line for line in lines(result.output) if line.startswith("error: ")]
    assert len(errors) == 2 and str(broken) in errors[0] and str(missing) in errors[1]
    assert lines(result.output)[-1].startswith("Error: 2 of 4 runs failed")


def test_out_under_a_file_is_refused_before_any_work(run, tmp_path):
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["eval", str(run), "--out", str(tmp_path / "file" / "results"), *FAST])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(lines(result.output)) == 1 and "cannot write to output folder" in result.output


@pytest.mark.parametrize("option,value", [("--eps", "nan"), ("--eps", "inf"), ("--eps", "-0.1"), ("--n", "0"),
                                          ("--pgd-steps", "-3"), ("--seed", "-1"), ("--num-threads", "-2")])
def test_bad_numbers_get_one_line(run, tmp_path, option, value):
    result = CliRunner().invoke(main, ["eval", str(run), "--out", str(tmp_path / "o"), *FAST, option, value])
    assert result.exit_code == 2 and "Traceback" not in result.output and option in result.output
    assert not (tmp_path / "o").exists()  # refused before anything touched the disk


def test_an_entry_with_wrong_types_is_not_a_cache(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"{run.name}.json"
    for junk in ({"part_hashes": "x", "clean_acc": "high"}, {"part_hashes": {"clean": 5}, "skipped": []}, [1, 2]):
        target.write_text(json.dumps(junk))
        result = CliRunner().invoke(main, ["eval", str(run), "--out", str(out), *FAST])
        assert result.exit_code == 0, result.output
        entry = json.loads(target.read_text())
        assert isinstance(entry["clean_acc"], float) and entry["cached_parts"] == []
    target.write_bytes(b"\x00\xff not json")
    assert CliRunner().invoke(main, ["eval", str(run), "--out", str(out), *FAST]).exit_code == 0
