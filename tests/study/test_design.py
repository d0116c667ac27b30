"""Design expansion: names, hashes, teachers, seed-ordered phases, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from regcollide.study.design import DesignError, expand, load_design, phases

DESIGN = Path(__file__).resolve().parents[2] / "configs" / "study" / "design.yaml"


def test_full_design_meets_the_preregistered_size():
    jobs = expand(load_design(DESIGN))
    # 33 MLP configurations and 4 ViT ones, 3 seeds each: 111 models >= the 101 the power analysis asks
    # for (partial Spearman, |rho| = 0.3, 2 covariates + 10 family indicators)
    assert len(jobs) == 111 and len({j.config for j in jobs}) == 37
    assert all(sum(j.config == c for j in jobs) == 3 for c in {j.config for j in jobs})
    assert len({j.hash for j in jobs}) == 111
    assert all(j.autoattack and j.nullspace for j in jobs)  # every model gets AutoAttack and the Null-space search
    vit = next(j for j in jobs if j.name == "vit-p7-32-s2")
    assert vit.model["name"] == "vit-p7-d32" and vit.train["lr"] == 0.003
    proj = next(j for j in jobs if j.name == "proj-588-s1")
    assert proj.model == {"name": "mlp-proj-k588", "width": 1.0} and proj.seed == 1
    distill = next(j for j in jobs if j.name == "distill-0.6-s2")
    assert distill.teacher == "width-1024-s2" and distill.regularizers[0]["weight"] == 0.6


def test_phases_go_seed_by_seed_with_teachers_first():
    jobs = expand(load_design(DESIGN))
    order = [j for phase in phases(jobs) for j in phase]
    assert sorted(j.name for j in order) == sorted(j.name for j in jobs)
    seeds = [j.seed for j in order]
    assert seeds == sorted(seeds)
    position = {j.name: i for i, j in enumerate(order)}
    assert all(position[j.teacher] < position[j.name] for j in jobs if j.teacher)


def test_hash_changes_with_what_determines_the_entry():
    design = load_design(DESIGN, quick=True)
    before = {j.name: j.hash for j in expand(design)}
    design["measure"]["n"] += 1
    after = {j.name: j.hash for j in expand(design)}
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)


def test_bad_designs_are_rejected():
    with pytest.raises(DesignError, match="seeds"):
        expand({"measure": {}, "families": []})
    fam = {"family": "a", "model": "mlp-h32", "levels": [1]}
    with pytest.raises(DesignError, match="repeat"):
        expand({"seeds": [0], "measure": {}, "families": [fam, fam]})
    with pytest.raises(DesignError, match="teacher"):
        expand({"seeds": [0], "measure": {}, "families": [fam | {"teacher": "nope-s{seed}"}]})
