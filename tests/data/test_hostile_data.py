"""Hostile and broken data: one clear line each, through the library and through `regcollide data`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from regcollide.cli import main
from regcollide.data import DataError, dataset_info, load_dataset, load_tensors


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet(root, images: list, labels: list[int], split: str = "train") -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(exist_ok=True)
    pq.write_table(pa.table({"image": images, "label": labels}), root / "data" / f"{split}-00000-of-00001.parquet")
    return f"parquet:{root}"


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    # datasets' own "Generating ... split" progress bars (stderr) are not messages; everything else is.
    lines = [line for line in result.output.splitlines() if line.strip() and "examples/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    return lines[0]


def _good(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"bytes": _png(rng.integers(0, 256, (4, 4), dtype=np.uint8)), "path": None} for _ in range(n)]


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_outside_the_class_range_are_refused(tmp_path, bad):
    import datasets

    # A ClassLabel feature with 3 names bounds the labels; negative labels are always refused.
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))] * 4, "label": [0, 1, 2, bad]},
                                      features=features)
    if bad == 3:
        rows = rows.cast_column("label", datasets.ClassLabel(names=["a", "b", "c"]))  # label 3 is now outside
    (tmp_path / "data").mkdir()
    rows.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=r"outside \[0, "):
        load_dataset(f"parquet:{tmp_path}", "train")
    assert "outside" in _one_line_error(["data", f"parquet:{tmp_path}"])


def test_negative_labels_refused_through_parquet_without_metadata(tmp_path):
    spec = _parquet(tmp_path, _good(3), [0, -2, 1])
    assert "outside [0, num_classes)" in _one_line_error(["data", spec])


def test_image_column_of_strings(tmp_path):
    spec = _parquet(tmp_path, ["cat.png", "dog.png"], [0, 1])
    line = _one_line_error(["data", spec])
    assert "holds str values, not images" in line


def test_corrupt_png_and_truncated_png_in_imagefolder(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="not a readable image"):
        load_tensors(f"imagefolder:{tmp_path}", "train")
    good = (tmp_path / "b" / "1.png").read_bytes()
    (tmp_path / "a" / "0.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="not a readable image"):
        load_tensors(f"imagefolder:{tmp_path}", "train")


def test_decompression_bomb_is_refused_in_one_line(tmp_path, monkeypatch):
    # A small limit stands in for PIL's 89-megapixel default: a 64x64 file then decodes to "too many" pixels.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("L", (64, 64)).save(tmp_path / cls / f"{i}.png")
    line = _one_line_error(["data", f"imagefolder:{tmp_path}"])
    assert "decompression bomb" in line


def test_one_class_imagefolder_says_what_is_missing(tmp_path):
    (tmp_path / "only").mkdir()
    for i in range(3):
        Image.new("L", (4, 4)).save(tmp_path / "only" / f"{i}.png")
    line = _one_line_error(["data", f"imagefolder:{tmp_path}"])
    assert "at least two class-named sub-folders" in line and "only 'only'" in line
    assert "Key label" not in line
    with pytest.raises(DataError, match="at least two"):
        dataset_info(f"imagefolder:{tmp_path}")
