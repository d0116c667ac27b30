"""Hostile inputs beyond the reported failure classes: model ids with path traversal or arbitrary callables,
YAML alias bombs and python tags, degenerate datasets, odd run names. Each is one line, exit non-zero,
nothing executed or written."""

from __future__ import annotations

import time

import pytest
from conftest import invoke, one_error_line, tree
from test_faults import _parquet, _png, _tiny, _train

# Nine nested levels of nine aliases each: about 387 million strings if anything expands it.
ALIAS_BOMB = "[" + ", ".join(["&a0 [x,x,x,x,x,x,x,x,x]"] + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]"
                                                          for i in range(1, 9)]) + "]"


@pytest.mark.parametrize(("model", "fragment"), [
    ("os:system", "cannot be called with only the geometry keywords"),
    ("builtins:len", "cannot be called with only the geometry keywords"),
    ("math:pi", "is not a callable model factory"),
    ("rb:../../x", "unknown RobustBench dataset"),
    ("timm:../../etc/passwd", "unknown timm model"),
    ("tv:../x", "unknown torchvision model"),
])
def test_hostile_model_ids_are_one_line(world, model, fragment):
    before = tree(world["root"])
    assert fragment in invoke(["audit", model], 1)
    assert tree(world["root"]) == before


def test_bogus_device_and_a_folder_as_weights(world):
    assert "unknown device 'bogus'" in invoke(["audit", "mlp", "--device", "bogus"], 1)
    assert "is a directory" in invoke(["audit", "mlp", "--weights", str(world["neighbour"])], 2)


@pytest.mark.parametrize("config", [f"run_name: {ALIAS_BOMB}\n",
                                    f"regularizers:\n  - name: singular\n    params: {{measure: {ALIAS_BOMB}}}\n"],
                         ids=["run_name", "params"])
def test_yaml_alias_bomb_is_refused_quickly(world, capsys, config):
    path = world["root"] / "bomb.yaml"
    path.write_text(config)
    started = time.perf_counter()
    code, err = _train(capsys, str(path), "--dry-run")
    assert code == 2 and one_error_line(err, "error:")
    assert len(err) < 2000 and time.perf_counter() - started < 10


def test_yaml_python_tag_never_executes(world, capsys):
    marker = world["root"] / "PWNED"
    path = world["root"] / "tag.yaml"
    path.write_text(f'train: !!python/object/apply:os.system ["touch {marker}"]\n')
    code, err = _train(capsys, str(path), "--dry-run")
    assert code == 2 and "invalid YAML" in one_error_line(err, "error:")
    (world["run"] / "config.yaml").write_text(path.read_text())
    assert "not valid YAML" in invoke(["audit", "mlp", "--checkpoint", str(world["run"])], 1)
    assert not marker.exists()


def test_huge_and_empty_parquet_labels(world):
    huge = _parquet(world["root"] / "huge", [_png(i) for i in range(4)], [0, 1, 2, 2**40])
    assert "outside [0, num_classes)" in invoke(["data", huge], 1)
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    empty = _parquet(world["root"] / "empty", pa.array([], type=image), pa.array([], type=pa.int64()))
    assert "non-empty parquet file" in invoke(["data", empty], 1)


def test_float_labels_and_empty_class_folders(world):
    floats = _parquet(world["root"] / "floats", [_png(i) for i in range(4)], [0.0, 1.5, 2.0, 1.0])
    assert "not integer class indices" in invoke(["data", floats], 1)
    for cls in ("a", "b"):
        (world["root"] / "images" / cls).mkdir(parents=True)
    assert "holds no image files" in invoke(["data", f"imagefolder:{world['root'] / 'images'}"], 1)


@pytest.mark.parametrize("name", ["a" * 300, "con/../x", "a:b/c", "..."])
def test_odd_run_names_leave_nothing(world, capsys, name):
    before = tree(world["root"])
    code, err = _train(capsys, "--set", f"out_dir={world['runs']}", "--set", f"run_name={name}", *_tiny())
    assert code == 2 and "run_name" in one_error_line(err, "error:")
    assert tree(world["root"]) == before


def test_unicode_run_name_trains(world, capsys):
    code, err = _train(capsys, "--set", f"out_dir={world['runs']}", "--set", "run_name=Ω-ü-名前", *_tiny())
    assert code == 0, err
    assert (world["runs"] / "Ω-ü-名前" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["correlate", "leaderboard"])
def test_an_empty_entries_folder_is_one_line(world, command):
    empty = world["root"] / "no_entries"
    empty.mkdir()
    assert "no usable eval entries" in invoke([command, str(empty), "--out", str(world["root"] / "o")], 1)
    assert not (world["root"] / "o").exists()


def test_state_pointer_symlinked_outside_is_replaced_not_followed(world, capsys):
    latest = world["run"] / "state" / "latest"
    latest.unlink()
    latest.symlink_to(world["neighbour"])
    before = tree(world["neighbour"])
    code, err = _train(capsys, "--resume", str(world["run"]), "--set", "train.epochs=3")
    assert code == 0, err
    assert not latest.is_symlink() and latest.read_text().strip() == "step_00000024"
    assert tree(world["neighbour"]) == before


def test_a_folder_where_the_metrics_file_should_be_is_one_line(world, capsys):
    metrics = world["run"] / "metrics.jsonl"
    metrics.unlink()
    metrics.mkdir()
    states = {p.name: tree(p) for p in (world["run"] / "state").glob("step_*")}
    code, err = _train(capsys, "--resume", str(world["run"]), "--set", "train.epochs=3")
    assert code == 2 and "Is a directory" in one_error_line(err, "error:")
    assert {p.name: tree(p) for p in (world["run"] / "state").glob("step_*")} == states
