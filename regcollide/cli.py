"""The ``regcollide`` command line: a lazy click group.

Each command lives in ``regcollide/commands/<name>.py`` and is imported only when it runs (or when its
help is shown), so ``regcollide --help`` answers without importing torch.
"""

from __future__ import annotations

import importlib

import click

# name -> (import path, one-line help shown by `regcollide --help` without importing the command)
COMMANDS = {
    "models": ("regcollide.commands.models:models", "List the model registry (and how to name timm/tv models)."),
    "data": ("regcollide.commands.data:data", "Show split sizes, image shape and class balance of a dataset."),
    "audit": ("regcollide.commands.audit:audit", "Weight-spectrum audit: rank, nullity, nu, mu per layer."),
    "attack": ("regcollide.commands.attack:attack", "Run a collision or adversarial evaluator on a model."),
    "eval": ("regcollide.commands.eval:eval_cmd", "Evaluate trained run folders into leaderboard entries."),
    "leaderboard": ("regcollide.commands.leaderboard:leaderboard",
                    "Build Markdown, CSV and HTML leaderboards from eval entries."),
    "correlate": ("regcollide.commands.correlate:correlate",
                  "Correlate nu/mu/nullity with PGD ease across eval entries."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name][0].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in self.list_commands(ctx) if name in self.lazy]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="regcollide")
def main() -> None:
    """regcollide: measure, attack and train against feature collisions in neural networks.

    Two inputs collide when a network maps them to the same features. MODEL arguments are registry names
    (see `regcollide models`), `timm:<name>` or `tv:<name>`; RUN arguments are run folders written by
    `train/regularized.py`; data SPECs are `mnist5k` (embedded), `hf:<id>[:<config>]`, `parquet:<path>`
    or `imagefolder:<dir>`.
    """


if __name__ == "__main__":
    main()
