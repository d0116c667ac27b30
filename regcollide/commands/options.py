"""Options shared by the commands, and the one place where MODEL/--checkpoint/--data become tensors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

DATA_HELP = "Dataset spec: mnist5k (embedded), hf:<id>[:<config>], parquet:<path> or imagefolder:<dir>."


def model_options(fn: Callable) -> Callable:
    """MODEL argument plus --checkpoint RUN."""
    fn = click.option("--checkpoint", "checkpoint", metavar="RUN", default=None,
                      type=click.Path(exists=True, file_okay=False),
                      help="Run folder written by train/regularized.py (config.yaml + model.safetensors).")(fn)
    return click.argument("model", metavar="MODEL")(fn)


def data_options(default_n: int = 100) -> Callable:
    """--data SPEC, --n N, --seed S."""

    def wrap(fn: Callable) -> Callable:
        fn = click.option("--seed", type=int, default=0, show_default=True,
                          help="Seed for sample selection and random starts.")(fn)
        fn = click.option("--n", "n", type=click.IntRange(min=1), default=default_n, show_default=True,
                          help="Number of test images to use.")(fn)
        return click.option("--data", "data", default="mnist5k", show_default=True, help=DATA_HELP)(fn)

    return wrap


def out_option(default: str) -> Callable:
    return click.option("--out", "out", type=click.Path(file_okay=False), default=default, show_default=True,
                        help="Output folder (created if missing).")


def user_errors(fn: Callable) -> Callable:
    """Turn the library's input errors (ValueError, FileNotFoundError) into one-line click errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, FileNotFoundError, KeyError) as err:
            message = err.args[0] if err.args else str(err)
            raise click.ClickException(str(message)) from err

    return wrapper


def load_model(model: str, checkpoint: str | None, data: str | None):
    """(model in eval mode, info) — see :func:`regcollide.runs.resolve_model`."""
    from regcollide.models.resolve import resolve_model

    return resolve_model(model, checkpoint, data)


def load_model_and_data(model: str, checkpoint: str | None, data: str, n: int, seed: int = 0,
                        split: str = "test"):
    """(model, images, labels, info): ``n`` test images of ``data``, adapted to the model's input geometry.

    Labels of a dataset with other classes than the model (mnist digits on an ImageNet model) are kept as
    they are; evaluators that need the model's own labels use its clean predictions instead.
    """
    from regcollide.data import adapt_images, load_tensors

    net, info = load_model(model, checkpoint, data)
    images, labels = load_tensors(info.get("data") or data, split, n=n, seed=seed)
    chans, size, _ = info["input_shape"]
    images = adapt_images(images, chans, size)
    return net, images, labels, info


def ensure_out(out: str) -> Path:
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path
