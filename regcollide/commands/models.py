"""``regcollide models``: the registry, and how to name every other model."""

from __future__ import annotations

import click

NAMING = """
Other models, named as MODEL on any command:
  timm:<name>                    any timm model, e.g. timm:deit_tiny_patch16_224 (ImageNet geometry)
  hf-hub:<org>/<repo>            a timm model on the Hugging Face hub (needs the hub or its local cache)
  tv:<name>                      any torchvision model, e.g. tv:resnet50
  rb:<dataset>/<threat>/<name>   a RobustBench model, e.g. rb:cifar10/Linf/Standard
  module:callable                your own nn.Module factory, e.g. mynets:make_net (or path/to/file.py:make_net),
                                 called with the num_classes/in_chans/img_size/width keywords it accepts
All are built at random init. Weights:
  --weights FILE                 a local safetensors or torch.save state dict (torchvision, timm, RobustBench
                                 or regcollide layout), read without unpickling; works offline
  --pretrained                   the library's own weights (timm default tag, torchvision DEFAULT, RobustBench),
                                 downloaded on request; offline it fails within seconds naming --weights FILE
  tv: weights enums in Python:   create_model("tv:resnet50", weights="IMAGENET1K_V2")"""


@click.command("models")
@click.option("--all", "show_all", is_flag=True,
              help="Also count the timm and torchvision models and list the RobustBench CIFAR-10 Linf ids.")
def models(show_all: bool) -> None:
    """List the model registry, with parameter counts at the default geometry and width 1."""
    from regcollide.models import create_model, default_geometry, list_models

    click.echo(f"{'name':<16} {'input':<10} {'params':>12}")
    for name in list_models():
        geometry = default_geometry(name)
        params = sum(p.numel() for p in create_model(name).parameters())
        shape = f"{geometry['in_chans']}x{geometry['img_size']}x{geometry['img_size']}"
        click.echo(f"{name:<16} {shape:<10} {params:>12,}")
    click.echo(NAMING)
    if show_all:
        import timm
        from torchvision.models import list_models as tv_models

        from regcollide.models.rb import list_ids

        click.echo(f"\ntimm: {len(timm.list_models())} models; torchvision: {len(tv_models())} models.")
        ids = list_ids("cifar10", "Linf")
        click.echo(f"RobustBench cifar10/Linf: {len(ids)} models, e.g. " + ", ".join(f"rb:{i}" for i in ids[:5]))
