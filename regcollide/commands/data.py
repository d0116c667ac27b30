"""``regcollide data SPEC``: split sizes, shape and class balance of every split."""

from __future__ import annotations

import click

from regcollide.commands.options import DATA_HELP, user_errors


@click.command("data", help="Describe a dataset SPEC (default mnist5k): every split's size, first image shape "
               "and class balance. " + DATA_HELP)
@click.argument("spec", default="mnist5k")
@user_errors
def data(spec: str) -> None:
    from regcollide.data import describe

    summary = describe(spec)
    click.echo(f"dataset {spec}")
    width = max(5, *(len(split) for split in summary["splits"]))
    for split, info in summary["splits"].items():
        shape = "x".join(map(str, info["shape"]))
        counts = ", ".join(f"{c}:{k}" for c, k in enumerate(info["class_counts"]))
        click.echo(f"  {split:<{width}} {info['size']:>6} images  {shape}  classes {{{counts}}}")
