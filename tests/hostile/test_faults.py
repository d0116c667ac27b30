"""Fault injection: one case per class of hostile or broken input, through the real command lines.

Each case asserts the exit code, exactly one error line and no traceback, that nothing outside the run or
output folder changed (a sibling folder's snapshot), and that earlier results and checkpoints are intact.
Classes, in order: crafted pickles on resume; --overwrite escaping out_dir; a failed resume; two runs in one
folder; a damaged newest checkpoint; silently wrong results; small-sample statistics; reports; tracebacks;
unclear messages.
"""

from __future__ import annotations

import errno
import io
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY, invoke, one_error_line, train_script, tree
from PIL import Image
from safetensors.torch import load_file, save_file

from regcollide.training import checkpoint


def _train(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = train_script().main(list(argv))
    return code, capsys.readouterr().err


def _tiny(*overrides: str) -> list[str]:
    return [a for o in (*TINY, *overrides) for a in ("--set", o)]


def _states(run) -> list:
    return sorted(p for p in (run / "state").glob("step_*"))


class _Payload:
    """A pickle that, if ever unpickled, creates the file ``marker`` (the stand-in for attacker code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# 1. A crafted pickle in the newest state never executes: the state is refused and resume falls back.
def test_crafted_pickle_on_resume_never_executes(world, capsys):
    marker = world["root"] / "PWNED"
    newest = _states(world["run"])[-1]
    for name in ("custom_checkpoint_0.pkl", "optimizer.bin"):
        (newest / name).write_bytes(pickle.dumps(_Payload(marker)))
    before = tree(world["neighbour"])
    code, err = _train(capsys, "--resume", str(world["run"]), "--set", "train.epochs=3")
    assert code == 0, err
    assert not marker.exists()
    assert "falling back to step_00000008" in one_error_line(err, "warning:")
    assert tree(world["neighbour"]) == before


# 2. --overwrite with a run name that leaves out_dir deletes nothing.
@pytest.mark.parametrize("name", ["..", "ABSOLUTE", "../neighbour", "."])
def test_overwrite_with_an_escaping_run_name_deletes_nothing(world, capsys, name):
    name = str(world["neighbour"]) if name == "ABSOLUTE" else name
    before = tree(world["root"])
    code, err = _train(capsys, "--set", f"out_dir={world['runs']}", "--set", f"run_name={name}", "--overwrite",
                       *_tiny())
    assert code == 2
    assert "run_name" in one_error_line(err, "error:")
    assert tree(world["root"]) == before


# 3. A resume that changes the model or the data order is refused before anything is rewritten.
@pytest.mark.parametrize("override", ["model.width=0.5", "train.batch_size=64", "seed=3", "data.name=cifar10"])
def test_failed_resume_touches_nothing_and_the_run_stays_resumable(world, capsys, override):
    before = tree(world["root"])
    code, err = _train(capsys, "--resume", str(world["run"]), "--set", override)
    assert code == 2
    assert override.split("=")[0] in one_error_line(err, "error:")
    assert tree(world["root"]) == before
    code, err = _train(capsys, "--resume", str(world["run"]), "--set", "train.epochs=3")
    assert code == 0, err


# 4. A second run with the same name never writes into the first one's folder.
def test_second_run_with_the_same_name_is_refused(world, capsys):
    before = tree(world["root"])
    code, err = _train(capsys, "--set", f"out_dir={world['runs']}", "--set", "run_name=run", *_tiny())
    assert code == 2
    assert "run" in one_error_line(err, "error:")
    assert tree(world["root"]) == before


# 5. A damaged newest state (truncated optimizer, garbage RNG) or a torn metrics line: resume falls back.
@pytest.mark.parametrize("damage", ["optimizer.bin", "rng_0.safetensors", "metrics"])
def test_damaged_newest_checkpoint_falls_back(world, capsys, damage):
    run = world["run"]
    if damage == "metrics":
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write('{"step": 17, "lo')  # a half-written last line
    else:
        target = _states(run)[-1] / damage
        target.write_bytes(target.read_bytes()[: 40] if damage == "optimizer.bin" else b"\x00garbage" * 9)
    before = tree(world["neighbour"])
    code, err = _train(capsys, "--resume", str(run), "--set", "train.epochs=3")
    assert code == 0, err
    assert "Traceback" not in err
    if damage != "metrics":
        assert "falling back to step_00000008" in one_error_line(err, "warning:")
    assert tree(world["neighbour"]) == before
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone, every line parses


# 6. Settings that used to give silently wrong numbers are refused at the edge.
@pytest.mark.parametrize("argv", [["attack", "nullspace", "mlp", "--beta", "inf"],
                                  ["audit", "mlp", "--rtol", "nan"],
                                  ["attack", "pgd", "mlp", "--eps", "nan"],
                                  ["attack", "polytope", "mlp", "--lr", "inf"]],
                         ids=["nullspace-beta-inf", "audit-rtol-nan", "pgd-eps-nan", "polytope-lr-inf"])
def test_non_finite_settings_are_refused(world, argv):
    before = tree(world["root"])
    assert "not a finite number" in invoke([*argv, "--checkpoint", str(world["run"])], 2)
    assert tree(world["root"]) == before


def _png(value: int) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _parquet(root, images: list, labels: list) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"image": images, "label": labels}), root / "data" / f"{split}-00000-of-00001.parquet")
    return f"parquet:{root}"


def test_negative_parquet_labels_are_refused(world):
    spec = _parquet(world["root"] / "pq", [_png(i) for i in range(4)], [0, -1, 1, 2])
    out = world["root"] / "out"
    line = invoke(["attack", "pgd", "mlp", "--checkpoint", str(world["run"]), "--data", spec, "--n", "4",
                   "--out", str(out)], 1)
    assert "outside [0, num_classes)" in line
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("override", ["train.lr=nan", "train.lr=.inf",
                                      "regularizers=[{name: singular, weight: .nan}]"])
def test_non_finite_training_numbers_leave_no_run_folder(world, capsys, override):
    before = tree(world["root"])
    code, err = _train(capsys, "--set", f"out_dir={world['runs']}", "--set", "run_name=new", *_tiny(override))
    assert code == 2
    assert "finite" in one_error_line(err, "error:")
    assert tree(world["root"]) == before and not (world["runs"] / "new").exists()


# 7. Three models: no p = 0, no "significant"; the report says nothing can be concluded.
def test_correlate_on_three_entries_concludes_nothing(world, write_entries):
    folder = write_entries([{"clean_acc": 0.1 * i} for i in range(3)])
    out = world["root"] / "corr"
    invoke(["correlate", str(folder), "--out", str(out), "--n-boot", "100", "--n-perm", "99"], 0)
    report = (out / "report.md").read_text()
    assert "nothing can be concluded" in report.lower()
    rows = json.loads((out / "correlations.json").read_text())
    text = json.dumps(rows)
    assert '"p": 0.0' not in text and '"p_value": 0.0' not in text


# 8. Reports: threat models kept apart, CSV cells neutralized, newlines escaped in Markdown.
def test_leaderboard_keeps_threat_models_apart_and_escapes_cells(world, write_entries):
    folder = write_entries([{"name": "=HYPERLINK(\"x\")"}, {"name": "two\nlines"}, {"eps": 0.3, "name": "wide"}])
    out = world["root"] / "board"
    output = invoke(["leaderboard", str(folder), "--out", str(out)], 0)
    assert "Traceback" not in output
    csv = (out / "leaderboard.csv").read_text()
    assert not any(cell.startswith(("=", "+", "-", "@")) for line in csv.splitlines() for cell in line.split(","))
    markdown = (out / "leaderboard.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert any("two" in line and "lines" in line for line in table)  # the name stayed on one table row
    assert "0.3" in markdown and "0.1" in markdown  # both budgets shown, in separate sections


def test_correlate_refuses_mixed_threat_models_in_one_line(world, write_entries):
    folder = write_entries([{"eps": 0.1}, {"eps": 0.3}, {"norm": "l2"}])
    assert "threat model" in invoke(["correlate", str(folder), "--out", str(world["root"] / "c")], 1)


def test_leaderboard_entry_with_wrong_types_is_one_line(world, write_entries):
    # A batch report keeps going: the malformed entry is skipped with one line naming the key.
    folder = write_entries([{}, {"clean_acc": "high"}])
    output = invoke(["leaderboard", str(folder), "--out", str(world["root"] / "b")], 0)
    assert "key 'clean_acc' must be a finite number" in one_error_line(output, "skipped:")
    assert "model0" in (world["root"] / "b" / "leaderboard.md").read_text()


# 9. Tracebacks the README promised would be one line.
@pytest.mark.parametrize("content", ["empty", "truncated", "random"])
@pytest.mark.parametrize("command", ["audit", "pgd"])
def test_broken_weights_file_is_one_line(world, content, command):
    weights = world["run"] / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes({"empty": b"", "truncated": good[: len(good) // 2],
                         "random": np.random.default_rng(0).bytes(4096)}[content])
    before = tree(world["neighbour"])
    argv = ["audit", "mlp"] if command == "audit" else ["attack", "pgd", "mlp", "--n", "4", "--out",
                                                         str(world["root"] / "out")]
    invoke([*argv, "--checkpoint", str(world["run"])], 1)
    assert tree(world["neighbour"]) == before


@pytest.mark.parametrize("command", ["audit", "pgd"])
def test_nan_weights_are_one_line(world, command):
    weights = world["run"] / "model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, weights)
    argv = ["audit", "mlp"] if command == "audit" else ["attack", "pgd", "mlp", "--n", "4", "--out",
                                                         str(world["root"] / "out")]
    line = invoke([*argv, "--checkpoint", str(world["run"])], 1)
    assert "nan" in line.lower() or "finite" in line.lower()


def test_out_under_a_file_fails_before_any_work(world):
    blocker = world["root"] / "file"
    blocker.write_text("x")
    line = invoke(["attack", "pgd", "mlp", "--checkpoint", str(world["run"]), "--n", "4",
                   "--out", str(blocker / "sub")], 1)
    assert "--out" in line and blocker.read_text() == "x"


def test_eval_keeps_going_past_a_truncated_run(world, tmp_path):
    runs = world["runs"]
    for name in ("a", "b", "c"):
        shutil.copytree(world["run"], runs / name)
    weights = runs / "b" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "entries"
    line = invoke(["eval", str(runs / "a"), str(runs / "b"), str(runs / "c"), "--out", str(out), "--parts",
                   "clean", "--n", "10", "--no-progress"], 1)
    assert "1 of 3 runs failed" in line and "b" in line
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "c.json"]


def test_corrupt_teacher_is_one_line(world, capsys):
    teacher = world["runs"] / "run"
    (teacher / "model.safetensors").write_bytes(b"\x00garbage" * 40)
    before = tree(world["root"])
    code, err = _train(capsys, "--set", f"out_dir={world['runs']}", "--set", "run_name=student",
                       *_tiny(f"regularizers=[{{name: distill, params: {{teacher: {teacher}}}}}]"))
    assert code == 2 and "cannot read weights file" in one_error_line(err, "error:")
    assert tree(world["root"]) == before


def test_full_disk_during_a_save_keeps_the_previous_states(world, capsys, monkeypatch):
    run = world["run"]
    states_before = {p.name: tree(p) for p in _states(run)}

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "write_file", full_disk)
    code, err = _train(capsys, "--resume", str(run), "--set", "train.epochs=3")
    assert code == 2
    assert "No space left on device" in one_error_line(err, "error:")
    assert {p.name: tree(p) for p in _states(run)} == states_before


# 10. Messages that say what to do.
def test_eps_one_does_not_mention_an_unset_option(world):
    line = invoke(["attack", "pgd", "mlp", "--checkpoint", str(world["run"]), "--eps", "1", "--n", "4",
                   "--out", str(world["root"] / "o")], 2)
    assert "--eps-max" not in line and "--eps" in line


def test_parquet_string_images_and_one_class_imagefolder_say_what_is_wrong(world):
    spec = _parquet(world["root"] / "strings", ["cat.png", "dog.png"], [0, 1])
    assert "not images" in invoke(["data", spec], 1)
    folder = world["root"] / "images" / "only"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("L", (4, 4)).save(folder / f"{i}.png")
    line = invoke(["data", f"imagefolder:{folder.parent}"], 1)
    assert "at least two" in line and "Key label" not in line
