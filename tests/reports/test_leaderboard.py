"""Leaderboard: ranking rule, AutoAttack->PGD fallback, Markdown/CSV/HTML outputs."""

from __future__ import annotations

import csv
import json

import pytest

from regcollide.reports.leaderboard import load_entries, rank_entries, table_rows, to_markdown, write_leaderboard


def fake_entry(name: str, aa: float | None, pgd: float, nu: int = 2, mu: int = 2, nullity: int = 10,
               first: int = 5, clean: float = 0.95, eps_star: float = 0.05, steps: float = 5.0,
               pgd_flags: tuple = (), regs: tuple = (), sigma_ratio: float = 0.1, cosine: float = 0.5) -> dict:
    """A minimal eval entry with the eval-entry keys of docs/design.md, threat model (dataset, norm, ε, n)
    included (numbers chosen by each test)."""
    layers = [{"name": f"l{i}", "kind": "linear", "out_dim": 4, "in_dim": 8, "rank": 4, "nullity": 4,
               "structural_nullity": 4, "sigma_min": sigma_ratio * (i + 1), "sigma_max": float(i + 1),
               "max_cosine": cosine} for i in range(2)]
    return {
        "name": name, "model": "mlp", "width": 1.0, "dataset": "mnist5k", "seed": 0, "versions": {},
        "training": {"regularizers": [{"name": r, "weight": 0.1, "params": {}} for r in regs]},
        "clean_acc": clean,
        "pgd": {"norm": "linf", "eps": 0.1, "n": 200, "steps": 10, "restarts": 1, "clean_acc": clean,
                "robust_acc": pgd,
                "median_eps_star": eps_star, "mean_steps_to_success": steps, "curve": [],
                "flags": [{"id": f, "message": f"check {f} failed"} for f in pgd_flags]},
        "autoattack": None if aa is None else {"robust_acc": aa, "clean_acc": clean, "flags": [], "n": 100,
                                               "pgd_robust_acc_same_subset": pgd},
        "audit": {"nu": nu, "mu": mu, "n_weights": 3, "nu_frac": nu / 3, "mu_frac": mu / 3,
                  "total_nullity": nullity, "first_nullity": first, "structural_nullity": 8,
                  "excess_nullity": nullity - 8, "layers": layers},
        "nullspace": {"exact": True, "nullity": first, "flags": []},
        "polytope": {"success_rate": 0.5, "distance_ratio": 0.8},
    }


def test_ranked_by_autoattack_with_pgd_fallback():
    entries = [fake_entry("a", aa=0.10, pgd=0.90), fake_entry("b", aa=0.30, pgd=0.35),
               fake_entry("c", aa=None, pgd=0.20)]
    ranked = rank_entries(entries)
    # AutoAttack decides even when PGD disagrees; "c" has only PGD and slots in by its PGD accuracy.
    assert [e["name"] for e in ranked] == ["b", "c", "a"]
    assert [e["_score_source"] for e in ranked] == ["autoattack", "pgd", "autoattack"]
    assert [e["_rank"] for e in ranked] == [1, 2, 3]


def test_outputs_written(tmp_path):
    entries = [fake_entry("erm", aa=0.0, pgd=0.01, pgd_flags=("zero_gradients",)),
               fake_entry("sing", aa=0.2, pgd=0.3, regs=("singular",), nu=0, mu=0, nullity=0, first=0),
               fake_entry("at", aa=None, pgd=0.6, regs=("pgd_at",))]
    src = tmp_path / "entries"
    src.mkdir()
    for e in entries:
        (src / f"{e['name']}.json").write_text(json.dumps(e))
    (src / "other.json").write_text(json.dumps({"unrelated": 1}))   # not an entry: ignored
    loaded = load_entries(src)
    assert sorted(e["name"] for e in loaded) == ["at", "erm", "sing"]

    paths = write_leaderboard(loaded, tmp_path / "out")
    md = paths["markdown"].read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split("|")[2].strip() for line in table] == ["at", "sing", "erm"]
    assert "†" in md and "No AutoAttack result for at" in md
    for header in ("ν", "μ", "Σ nullity", "nullity(W1)", "Null-space exact", "Polytope success %",
                   "Distance ratio", "Flags"):
        assert header in md
    assert "pgd: zero_gradients" in md
    assert "singular(0.1)" in md and "ERM" in md

    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["at", "sing", "erm"]
    assert float(rows[1]["autoattack_acc"]) == pytest.approx(20.0)
    assert rows[0]["autoattack_acc"] == "" and rows[0]["ranked_by"] == "pgd"
    assert float(rows[1]["pgd_acc_aa_subset"]) == pytest.approx(30.0) and rows[0]["pgd_acc_aa_subset"] == ""
    assert "PGD % (AA images)" in md and "AutoAttack on the first 100 of those same images" in md

    page = paths["html"].read_text()
    assert "<script>" in page and "<style>" in page
    # Self-contained: nothing fetched from elsewhere.
    for marker in ("http://", "https://", "src=", "<link"):
        assert marker not in page


def test_markdown_escapes_pipes_and_handles_missing():
    e = fake_entry("a|b", aa=None, pgd=0.5)
    e["audit"] = None
    md = to_markdown(table_rows([e]))
    assert "a\\|b" in md
    row = next(line for line in md.splitlines() if "a\\|b" in line)
    assert "–" in row   # audit columns show a dash, not 'None'
    assert "None" not in md


def test_empty_and_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="regcollide eval"):
        write_leaderboard([], tmp_path)
    with pytest.raises(FileNotFoundError, match="regcollide eval"):
        load_entries(tmp_path / "missing")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_entries(tmp_path)
