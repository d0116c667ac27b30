"""``regcollide audit``: the weight-spectrum audit (nu, mu, nullity; Ozbulak et al. 2022, Table 1)."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import click

from regcollide.commands.options import DATA_HELP, load_model, model_options, user_errors
from regcollide.commands.types import finite

LAYER_COLUMNS = ("name", "kind", "out_dim", "in_dim", "rank", "nullity", "structural_nullity",
                 "excess_nullity", "expected_random_excess", "sigma_min", "sigma_max", "tol", "max_cosine",
                 "method")
SUMMARY_KEYS = ("model", "convention", "n_weights", "nu", "mu", "nu_frac", "mu_frac", "total_nullity",
                "structural_nullity", "excess_nullity", "first_nullity", "first_layer", "first_layer_source")


def _cell(value) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(result: dict, per_layer: bool) -> str:
    """Aligned plain-text report: optional per-layer rows, a totals line and the model summary."""
    lines = []
    if per_layer:
        rows = [[_cell(layer[c]) for c in LAYER_COLUMNS] for layer in result["layers"]]
        totals = ["TOTAL", f"{result['n_weights']} matrices", "", "", "", _cell(result["total_nullity"]),
                  _cell(result["structural_nullity"]), _cell(result["excess_nullity"]), "", "", "", "", "", ""]
        widths = [max(len(c), *(len(r[i]) for r in [*rows, totals])) for i, c in enumerate(LAYER_COLUMNS)]

        def fmt(row: list[str]) -> str:
            return "  ".join(v.ljust(w) if i < 2 or i == len(row) - 1 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(row, widths, strict=True)))

        lines += [fmt(list(LAYER_COLUMNS)), fmt(["-" * w for w in widths]), *map(fmt, rows),
                  fmt(["-" * w for w in widths]), fmt(totals), ""]
    n = result["n_weights"]
    first = next(layer for layer in result["layers"] if layer["name"] == result["first_layer"])
    tol = ("default (sigma_max * max(out, in) * eps(float32))" if result["rtol"] is None and result["atol"] is None
           else f"rtol={result['rtol']}, atol={result['atol']}")
    lines += [
        f"model          {result['model']}  (convention: {result['convention']}, tolerance: {tol})",
        f"n_weights      {n}",
        f"nu             {result['nu']}  ({result['nu_frac']:.1%} of matrices have nullity >= 1)",
        f"mu             {result['mu']}  ({result['mu_frac']:.1%} of matrices have out < in)",
        f"sum nullity    {result['total_nullity']:,}  (structural {result['structural_nullity']:,}, "
        f"excess {result['excess_nullity']:,})",
        f"nullity(W1)    {result['first_nullity']:,}  ({first['name']}, {first['out_dim']}x{first['in_dim']}, "
        f"found by {result['first_layer_source']} order)",
        *_sensitivity_lines(result.get("tolerance_sensitivity") or []),
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _sensitivity_lines(rows: list[dict]) -> list[str]:
    """nu and excess nullity at multiples of the tolerance, next to what random weights would give."""
    if not rows:
        return []
    lines = ["", "tolerance sensitivity (excess nullity near the random-init expectation, or vanishing at 0.1x, "
                 "is float noise):", "  tol x     nu   excess   expected at random init"]
    for row in rows:
        expected = "-" if row["expected_random_excess"] is None else f"{row['expected_random_excess']:.2f}"
        lines.append(f"  {row['factor']:<6g}{row['nu']:>5}{row['excess_nullity']:>9,}   {expected}")
    return lines


def check_out_file(out: str) -> None:
    """Refuse an --out the report cannot be written to, before the (possibly long) audit runs."""
    path = Path(out)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise click.BadParameter(f"{out} is a folder; give a file name", param_hint="--out")
    if not parent.is_dir():
        what = "a file" if any(p.is_file() for p in [parent, *parent.parents]) else "missing"
        raise click.BadParameter(f"the folder of {out} is {what}; give a file in an existing folder",
                                 param_hint="--out")
    if not os.access(parent, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        raise click.BadParameter(f"{out} is not writable; choose a writable location", param_hint="--out")


def format_csv(result: dict, per_layer: bool) -> str:
    """One row per layer (``--per-layer``) or one summary row."""
    buffer = io.StringIO()
    if per_layer:
        columns = ["model", "convention", *LAYER_COLUMNS, "max_abs_cosine", "rtol", "atol", "blocks"]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for layer in result["layers"]:
            writer.writerow({"model": result["model"], "convention": result["convention"],
                             **{c: layer[c] for c in columns[2:]}})
    else:
        writer = csv.DictWriter(buffer, fieldnames=SUMMARY_KEYS, lineterminator="\n")
        writer.writeheader()
        writer.writerow({k: result[k] for k in SUMMARY_KEYS})
    return buffer.getvalue()


@click.command("audit")
@model_options
@click.option("--convention", type=click.Choice(["paper", "grouped"]), default="paper", show_default=True,
              help="paper: ConvNd as weight.reshape(out, -1) (Ozbulak et al. Table 1); grouped: one block per "
                   "group, nullity summed.")
@click.option("--rtol", type=finite(0), default=None,
              help="Relative rank tolerance (tol = max(atol, rtol*sigma_max)) [default: max(out, in)*eps].")
@click.option("--atol", type=finite(0), default=None, help="Absolute rank tolerance.")
@click.option("--layers", "layer_set", type=click.Choice(["all", "paper"]), default="all", show_default=True,
              help="all: every Linear/Conv/ConvTranspose/attention matrix; paper: Ozbulak et al.'s Table 1 set "
                   "(no ConvTranspose).")
@click.option("--cosines/--no-cosines", default=True, show_default=True,
              help="Largest cosine between two rows of each matrix (costly for tall matrices).")
@click.option("--per-layer", is_flag=True, help="Table/CSV: one row per weight matrix (JSON always has them).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the report to this file instead of standard output.")
@click.option("--input-size", "input_size", type=click.IntRange(min=1), nargs=3, default=None,
              metavar="C H W", help="Input shape used to find W1 by a forward pass "
                                    "[default: ImageNet 3 224 224 for timm:/tv: models (299 for Inception-V3), "
                                    "the dataset's geometry for registry models].")
@click.option("--data", "data", default="mnist5k", show_default=True,
              help=f"Geometry source for registry models. {DATA_HELP}")
@click.option("--progress/--no-progress", default=False, show_default=True, help="Show a progress bar.")
@user_errors
def audit(model, checkpoint, convention, rtol, atol, layer_set, cosines, per_layer, fmt, out, input_size, data,
          progress) -> None:
    """Rank, nullity and singular values of every weight matrix of MODEL; nu, mu and nullity(W1).

    MODEL is a registry name, timm:<name> or tv:<name> (random init unless --pretrained/--weights), or the
    model of --checkpoint RUN (trained weights). The report shows nu and the excess nullity at 0.1x-100x
    the tolerance next to the count random weights of the same shapes would give, to tell trained rank
    deficiency from float noise.

    Example: regcollide audit tv:alexnet --per-layer
    """
    from regcollide.audit.spectrum import audit as run_audit
    from regcollide.io import dumps

    if out:
        check_out_file(out)
    net, info = load_model(model, checkpoint, data)
    shape = tuple(input_size) if input_size else tuple(info["input_shape"])
    result = run_audit(net, input_shape=shape, convention=convention, rtol=rtol, atol=atol, progress=progress,
                       name=info.get("name") or model, layer_set=layer_set, cosines=cosines).to_dict()
    result["checkpoint"] = info.get("checkpoint")
    if fmt == "json":
        text = dumps(result)
    elif fmt == "csv":
        text = format_csv(result, per_layer)
    else:
        text = format_table(result, per_layer)
    if out:
        from regcollide.io import atomic_write_bytes

        atomic_write_bytes(out, text.encode())
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)
