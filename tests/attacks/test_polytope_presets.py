"""The named polytope settings: Li et al.'s parameters are pinned, documented and runnable."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from regcollide.attacks.polytope.evaluate import NOT_CONVERGED, evaluate_polytope
from regcollide.attacks.polytope.presets import SETTINGS, get_setting
from regcollide.attacks.polytope.search import PolytopeSearch
from regcollide.cli import main
from regcollide.models import create_model

LI2019 = {"loss": "li2019", "hold": 1.0, "vertices": 5, "unit_order": "first", "init": "other", "steps": 30000,
          "samples": 2000}


def test_li2019_setting_pins_their_parameters_with_sources():
    setting = get_setting("li2019")
    assert setting.kwargs() == LI2019
    # every fixed value says where it comes from, and the open points name what we use instead
    assert all(len(choice.source) > 20 for choice in setting.fixed.values())
    assert {"network", "layer", "optimizer", "ratio denominator", "stopping"} <= set(setting.open)
    assert list(SETTINGS) == ["li2019"]
    with pytest.raises(ValueError, match="choose one of: li2019"):
        get_setting("li2020")


def test_first_unit_order_pushes_the_first_inactive_units():
    torch.manual_seed(0)
    model = create_model("mlp").eval()
    target = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(3))
    search = PolytopeSearch(model, vertices=5, steps=2, unit_order="first", progress=False)
    out = search.search(target)
    with torch.no_grad():
        z = search.features(target[None])[0]  # (D,) pre-activations of the first ReLU layer
    inactive = torch.nonzero(z <= 0).flatten()  # (D_inactive,) in increasing order
    assert torch.equal(out.units, inactive[:5])
    # the default stays a seeded random draw, which is not the first five here
    default = PolytopeSearch(model, vertices=5, steps=2, progress=False).search(target)
    assert not torch.equal(default.units, out.units)
    with pytest.raises(ValueError, match="unknown unit order"):
        PolytopeSearch(model, unit_order="last")


def test_li2019_setting_runs_at_tiny_size(mnist_test):
    images, labels = mnist_test
    torch.manual_seed(0)
    model = create_model("mlp").eval()
    tiny = get_setting("li2019").kwargs() | {"steps": 60, "samples": 50}
    d = evaluate_polytope(model, images[:40], labels[:40], targets=2, **tiny).to_dict()
    assert {k: d[k] for k in LI2019 if k not in ("steps", "samples")} == {
        k: v for k, v in LI2019.items() if k not in ("steps", "samples")}
    for row in d["per_target"]:
        assert labels[row["init_index"]] != labels[row["index"]]  # started from another digit
        assert row["units"] == sorted(row["units"]) and len(row["units"]) == 5
    # 60 steps is a budget, not convergence: the converged ratio is withheld and the budget-bound one kept
    assert d["distance_ratio"] is None and d["distance_ratio_all"] > 0
    assert NOT_CONVERGED in {flag["id"] for flag in d["flags"]}


@pytest.mark.parametrize("option", [["--loss", "hinge"], ["--steps", "100"], ["--vertices", "3"]])
def test_cli_refuses_an_option_the_setting_fixes(tmp_path, option):
    result = CliRunner().invoke(main, ["attack", "polytope", "mlp", "--setting", "li2019", *option,
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"--setting li2019 fixes {option[0]}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written
