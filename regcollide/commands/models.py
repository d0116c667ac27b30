"""``regcollide models``: the registry."""

from __future__ import annotations

import click


@click.command("models")
@click.option("--all", "show_all", is_flag=True, help="Also count the timm and torchvision models available.")
def models(show_all: bool) -> None:
    """List the model registry, with parameter counts at the default geometry and width 1."""
    from regcollide.models import create_model, default_geometry, list_models

    click.echo(f"{'name':<16} {'input':<10} {'params':>12}")
    for name in list_models():
        geometry = default_geometry(name)
        params = sum(p.numel() for p in create_model(name).parameters())
        shape = f"{geometry['in_chans']}x{geometry['img_size']}x{geometry['img_size']}"
        click.echo(f"{name:<16} {shape:<10} {params:>12,}")
    click.echo("\nAny timm model as 'timm:<name>' and any torchvision model as 'tv:<name>' (random init; "
               "pretrained weights only from a local file).")
    if show_all:
        import timm
        from torchvision.models import list_models as tv_models

        click.echo(f"timm: {len(timm.list_models())} models; torchvision: {len(tv_models())} models.")
