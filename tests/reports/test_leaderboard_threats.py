"""Leaderboard: threat models kept apart, hostile text escaped per format, malformed entries reported in one
line each, RobustBench model_info export, and the CLI on the study's real entries."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_leaderboard import fake_entry

from regcollide.commands.leaderboard import leaderboard
from regcollide.reports.cells import csv_cell, markdown_cell
from regcollide.reports.entries import EntryError, MixedThreatModelsError, load_entries, threat_model
from regcollide.reports.leaderboard import table_rows, to_markdown, write_leaderboard
from regcollide.reports.robustbench import eps_text, model_info, write_model_info

REPO = Path(__file__).resolve().parents[2]


def _study_entries() -> Path:
    """The first study's eval entries (19 `regcollide eval` entries, kept in docs/study/v1/; read only).

    docs/study/entries/ holds the current study's own records, which are not eval entries.
    """
    folder = REPO / "docs" / "study" / "v1" / "entries"
    assert len(list(folder.glob("*.json"))) == 19, f"expected the 19 committed eval entries in {folder}"
    return folder


def _write(folder: Path, entries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for e in entries:
        (folder / f"{e['name']}.json").write_text(json.dumps(e))
    return folder


def _mixed() -> list[dict]:
    entries = [fake_entry("a", aa=0.30, pgd=0.4), fake_entry("b", aa=0.50, pgd=0.6),
               fake_entry("eps03", aa=0.90, pgd=0.9), fake_entry("cifar", aa=0.70, pgd=0.8)]
    entries[2]["pgd"]["eps"] = 0.3
    entries[3]["dataset"] = "hf:uoft-cs/cifar10"
    return entries


def test_mixed_threat_models_get_separate_ranked_tables(tmp_path):
    paths = write_leaderboard(_mixed(), tmp_path)
    md = paths["markdown"].read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == ["## hf:uoft-cs/cifar10, linf, ε = 0.1", "## mnist5k, linf, ε = 0.1",
                        "## mnist5k, linf, ε = 0.3"]
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    # Ranks restart in every table: the ε = 0.3 model (90%) is #1 of its own table, not above the others.
    ranks = {r["name"]: (r["dataset"], r["norm"], float(r["eps"]), int(r["rank"])) for r in rows}
    assert ranks == {"cifar": ("hf:uoft-cs/cifar10", "linf", 0.1, 1), "b": ("mnist5k", "linf", 0.1, 1),
                     "a": ("mnist5k", "linf", 0.1, 2), "eps03": ("mnist5k", "linf", 0.3, 1)}
    for key in ("n_pgd", "n_autoattack", "pgd_steps", "pgd_restarts", "autoattack_version"):
        assert key in rows[0]
    assert "robust_acc" not in rows[0]   # "Robust %" duplicated "AutoAttack %"


def test_single_table_refuses_mixed_threat_models(tmp_path):
    with pytest.raises(MixedThreatModelsError, match="3 \\(hf:uoft-cs/cifar10, linf, ε = 0.1: 1 entries"):
        write_leaderboard(_mixed(), tmp_path / "lib", single_table=True)
    assert not (tmp_path / "lib").exists()
    src = _write(tmp_path / "entries", _mixed())
    result = CliRunner().invoke(leaderboard, [str(src), "--out", str(tmp_path / "out"), "--single-table"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "drop --single-table" in result.output
    assert not (tmp_path / "out").exists()
    # One threat model: --single-table is fine.
    ok = CliRunner().invoke(leaderboard, [str(_write(tmp_path / "one", _mixed()[:2])), "--out",
                                          str(tmp_path / "out"), "--single-table"])
    assert ok.exit_code == 0, ok.output


def test_threat_model_read_from_top_level_settings_or_parts():
    e = fake_entry("a", aa=0.1, pgd=0.2)
    assert (threat_model(e).dataset, threat_model(e).norm, threat_model(e).eps) == ("mnist5k", "linf", 0.1)
    e.update(norm="L2", eps=0.5)          # the top-level threat model wins over the parts
    assert (threat_model(e).norm, threat_model(e).eps) == ("l2", 0.5)
    assert threat_model(e).slug == "mnist5k-l2-eps0.5"


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_that_start_a_formula_are_neutralized(tmp_path, start):
    name = f"{start}HYPERLINK(\"x\")"
    e = fake_entry(name, aa=0.2, pgd=0.3)
    e["training"]["regularizers"] = [{"name": "=cmd", "weight": 0.1}]
    paths = write_leaderboard([e], tmp_path)
    with open(paths["csv"], newline="") as f:
        row = next(csv.DictReader(f))
    assert row["name"] == "'" + name and row["training"] == "'=cmd(0.1)"
    assert float(row["autoattack_acc"]) == pytest.approx(20.0)   # numbers stay numbers
    assert csv_cell(-0.5) == -0.5 and csv_cell("a=b") == "a=b" and csv_cell(None) == ""


def test_markdown_cells_survive_newlines_pipes_and_html(tmp_path):
    names = ["two\nlines", "pipe|in|name", "back\\", "<b>bold</b>", "cr\r\nlf"]
    md = to_markdown(table_rows([fake_entry(n, aa=0.1 * i, pgd=0.5) for i, n in enumerate(names)]))
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(names)          # header, rule, one line per model
    header_cells = table[0].count(" | ")
    for line in table[2:]:
        # Unescaped separators only: "\|" inside a cell does not count.
        assert line.replace("\\\\", "").replace("\\|", "").count(" | ") == header_cells, line
    assert "two lines" in md and "pipe\\|in\\|name" in md and "&lt;b&gt;bold&lt;/b&gt;" in md
    assert "<b>" not in md and "back\\\\ |" in md
    assert markdown_cell("a\nb|c") == "a b\\|c"


def test_html_escapes_everything(tmp_path):
    evil = '<script>alert(1)</script>" onmouseover="x'
    e = fake_entry(evil, aa=0.2, pgd=0.3, pgd_flags=("<i>flag</i>",))
    page = write_leaderboard([e], tmp_path, title="<h1>title</h1>")["html"].read_text()
    assert "<script>alert" not in page and "<i>flag" not in page and "<h1>title" not in page
    assert page.count("<script>") == 1   # ours only
    assert 'data-name="&lt;script&gt;alert(1)&lt;/script&gt;&quot; onmouseover=&quot;x"' in page


def test_malformed_entries_one_line_each_and_others_still_loaded(tmp_path):
    good = [fake_entry("good1", aa=0.2, pgd=0.3), fake_entry("good2", aa=0.4, pgd=0.5)]
    src = _write(tmp_path / "e", good)
    wrong_type = fake_entry("wrong", aa=0.1, pgd=0.2)
    wrong_type["audit"]["nu"] = "three"
    missing = fake_entry("missing", aa=0.1, pgd=0.2)
    del missing["audit"]
    not_object = fake_entry("notobj", aa=0.1, pgd=0.2)
    not_object["pgd"] = [1, 2]
    bool_number = fake_entry("boolnum", aa=0.1, pgd=0.2)
    bool_number["clean_acc"] = True
    for name, data in (("wrong", wrong_type), ("missing", missing), ("notobj", not_object),
                       ("boolnum", bool_number)):
        (src / f"{name}.json").write_text(json.dumps(data))
    (src / "torn.json").write_text('{"name": "torn", "pgd": {')
    (src / "inf.json").write_text(json.dumps(fake_entry("inf", aa=0.1, pgd=0.2)).replace('"clean_acc": 0.95',
                                                                                          '"clean_acc": Infinity', 1))
    (src / "huge.json").write_text(json.dumps(fake_entry("huge", aa=0.1, pgd=0.2)).replace('"nu": 2',
                                                                                            '"nu": 1' + "0" * 400))
    (src / "deep.json").write_text('{"name": "deep", "pgd": ' + "[" * 100000 + "]" * 100000 + "}")
    (src / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (src / "list.json").write_text("[1, 2, 3]")       # not an entry-shaped file: ignored

    problems: list[str] = []
    loaded = load_entries(src, problems)
    assert [e["name"] for e in loaded] == ["good1", "good2"]
    assert len(problems) == 9 and all("\n" not in p for p in problems)
    joined = "\n".join(problems)
    for expected in ("wrong.json: key 'audit.nu' must be a finite number, got str \"three\"",
                     "missing.json: missing key 'audit'", "notobj.json: key 'pgd' must be an object",
                     "boolnum.json: key 'clean_acc' must be a finite number, got bool", "torn.json is not valid JSON",
                     "binary.json cannot be read as JSON text", "inf.json: key 'clean_acc' must be a finite number",
                     "huge.json: key 'audit.nu' must be a finite number", "deep.json cannot be read"):
        assert expected in joined
    with pytest.raises(EntryError, match="binary.json"):
        load_entries(src)   # strict without a problems list: the first bad file (by name) raises

    result = CliRunner().invoke(leaderboard, [str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("skipped: ") for line in result.output.splitlines()) == 9
    assert "Traceback" not in result.output
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "good1" in md and "good2" in md and "wrong" not in md


def test_only_malformed_entries_is_one_line_error(tmp_path):
    src = tmp_path / "e"
    src.mkdir()
    (src / "x.json").write_text('{"name": 3, "pgd": {}, "audit": {}, "autoattack": null}')
    result = CliRunner().invoke(leaderboard, [str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no usable eval entries" in result.output
    assert "key 'name' must be a non-empty string" in result.output
    assert not (tmp_path / "out").exists()


def test_out_under_a_file_is_refused_before_writing(tmp_path):
    src = _write(tmp_path / "e", [fake_entry("a", aa=0.1, pgd=0.2)])
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    result = CliRunner().invoke(leaderboard, [str(src), "--out", str(blocker / "sub")])
    assert result.exit_code == 1 and "lies under the file" in result.output
    assert blocker.read_text() == "keep me"


def _robustbench_model_info_fields() -> list[str]:
    """Field names of RobustBench's own ModelInfo dataclass, read from the installed package's source
    (parsed, not imported: importing robustbench needs its optional dependencies)."""
    spec = importlib.util.find_spec("robustbench")
    source = Path(spec.submodule_search_locations[0], "utils.py").read_text()
    cls = next(node for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.ClassDef) and node.name == "ModelInfo")
    return [stmt.target.id for stmt in cls.body if isinstance(stmt, ast.AnnAssign)]


def test_robustbench_model_info_has_the_packages_fields(tmp_path):
    fields = _robustbench_model_info_fields()
    assert {"name", "authors", "additional_data", "number_forward_passes", "eps", "autoattack_acc"} <= set(fields)
    e = fake_entry("mlp-w1", aa=0.3125, pgd=0.4, clean=0.905)
    e["autoattack"].update(n=100, version="standard", clean_acc=0.9)
    e["pgd"].update(eps=8 / 255, n=200)
    info = model_info(e)
    # Every field RobustBench's ModelInfo has, in its order, except the corruption leaderboards' fields.
    assert list(info) == [f for f in fields if not f.startswith("corruptions_")]
    assert info["eps"] == "8/255" and info["dataset"] == "mnist5k"
    assert info["autoattack_acc"] == "31.25" and info["reported"] == "31.25"
    assert info["clean_acc"] == "90.00"     # AutoAttack's own clean accuracy, on the same images
    assert isinstance(info["additional_data"], bool) and info["number_forward_passes"] == 1
    # RobustBench's leaderboard code parses these with float(); ranks by autoattack_acc.
    assert float(info["clean_acc"]) == 90.0 and float(info["autoattack_acc"]) == 31.25
    assert "first of PGD's" in info["footnote"]


def test_robustbench_export_layout_and_refusals(tmp_path):
    ok = fake_entry("../evil name", aa=0.2, pgd=0.3)
    no_aa = fake_entry("no-aa", aa=None, pgd=0.3)
    l1 = fake_entry("l1", aa=0.2, pgd=0.3)
    l1["pgd"]["norm"] = "l1"
    l2 = fake_entry("l2", aa=0.2, pgd=0.3)
    l2["pgd"].update(norm="l2", eps=0.5)
    written, refused = write_model_info([ok, no_aa, l1, l2], tmp_path / "model_info")
    rel = sorted(str(p.relative_to(tmp_path / "model_info")) for p in written)
    assert rel == ["mnist5k/L2/l2.json", "mnist5k/Linf/evil_name.json"]
    assert all(p.resolve().is_relative_to((tmp_path / "model_info").resolve()) for p in written)
    assert json.loads((tmp_path / "model_info/mnist5k/L2/l2.json").read_text())["eps"] == "0.5"
    assert len(refused) == 2 and "no-aa: no AutoAttack" in refused[0] and "norm 'l1'" in refused[1]
    assert [eps_text(v) for v in (8 / 255, 4 / 255, 0.5, 0.1, 1.0)] == ["8/255", "4/255", "0.5", "0.1", "1"]


def test_cli_on_the_study_entries(tmp_path):
    study_entries = _study_entries()   # real eval entries
    before = {p.name: p.read_bytes() for p in study_entries.glob("*.json")}
    result = CliRunner().invoke(leaderboard, [str(study_entries), "--out", str(tmp_path / "board")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("## ")] == ["## mnist5k, linf, ε = 0.1"]
    with open(tmp_path / "board" / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(before) and [int(r["rank"]) for r in rows] == list(range(1, len(before) + 1))
    aa = [float(r["autoattack_acc"]) for r in rows]
    assert aa == sorted(aa, reverse=True)
    assert len(list((tmp_path / "board" / "model_info" / "mnist5k" / "Linf").glob("*.json"))) == len(before)
    assert {p.name: p.read_bytes() for p in study_entries.glob("*.json")} == before


def test_full_disk_during_write_is_one_line(tmp_path, monkeypatch):
    import regcollide.reports.leaderboard as lb

    src = _write(tmp_path / "e", [fake_entry("a", aa=0.1, pgd=0.2)])

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lb, "atomic_write_bytes", full)
    result = CliRunner().invoke(leaderboard, [str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and "No space left on device" in result.output


def test_footnote_without_recorded_sample_sizes():
    e = fake_entry("a", aa=0.1, pgd=0.2)
    del e["pgd"]["n"], e["autoattack"]["n"]
    md = to_markdown(table_rows([e]))
    assert "PGD on test images" in md and "AutoAttack on a prefix of those same images" in md
