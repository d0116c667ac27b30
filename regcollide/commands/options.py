"""Options shared by the commands, and the one place where MODEL/--checkpoint/--weights/--data become tensors.

``@model_options`` gives a command MODEL, ``--checkpoint RUN``, ``--weights FILE``, ``--pretrained`` and
``--device``. The last three are not passed to the command function: they are kept on the click context
and read by :func:`load_model` / :func:`load_model_and_data`, so every command that loads its model through
these functions honours them without any change to its signature.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from regcollide.commands.types import count

DATA_HELP = ("Dataset spec: mnist5k (embedded), hf:<id>[:<config>], parquet:<path> or imagefolder:<dir>; "
             "any split the source has (train, test, validation...).")
MODEL_HELP = ("MODEL: a registry name (regcollide models), timm:<name>, hf-hub:<repo>, tv:<name>, "
              "rb:<dataset>/<threat>/<name> (RobustBench), or module:callable / file.py:callable (your own "
              "nn.Module factory).")
_META = "regcollide.model_options"
# Peak bytes per input value per sample while a polytope is measured: the float64 convex combinations and
# sphere points with their float32 copies (measured: 29.6 bytes, from the peak RSS at 2,000 and 100,000
# samples of the mlp)
BYTES_PER_SAMPLE_VALUE = 32


def _remember(ctx: click.Context, param: click.Parameter, value):
    ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def weights_options(fn: Callable) -> Callable:
    """--weights FILE, --pretrained, --device: stored on the click context for :func:`load_model`."""
    fn = click.option("--device", default="auto", show_default=True, expose_value=False, callback=_remember,
                      help="cpu, cuda, cuda:N, mps, or auto (accelerate's choice: cuda, then mps, then cpu; "
                           "ACCELERATE_USE_CPU=1 forces cpu). Model and data move there.")(fn)
    fn = click.option("--pretrained", is_flag=True, default=False, expose_value=False, callback=_remember,
                      help="Download the library's pretrained weights (timm:, hf-hub:, tv: DEFAULT, rb:); "
                           "needs a network or a filled local cache. Offline, use --weights FILE.")(fn)
    return click.option("--weights", "weights", metavar="FILE", default=None, expose_value=False,
                        callback=_remember, type=click.Path(dir_okay=False),
                        help="Local weights for MODEL: a safetensors file or a torch.save state dict, in "
                             "torchvision, timm, RobustBench or regcollide layout (read without unpickling).")(fn)


def model_options(fn: Callable) -> Callable:
    """MODEL argument plus --checkpoint RUN, --weights FILE, --pretrained and --device."""
    fn = weights_options(fn)
    fn = click.option("--checkpoint", "checkpoint", metavar="RUN", default=None,
                      type=click.Path(exists=True, file_okay=False),
                      help="Run folder written by train/regularized.py (config.yaml + model.safetensors).")(fn)
    return click.argument("model", metavar="MODEL")(fn)


def data_options(default_n: int = 100) -> Callable:
    """--data SPEC, --n N, --seed S."""

    def wrap(fn: Callable) -> Callable:
        fn = click.option("--seed", type=count(min=0), default=0, show_default=True,
                          help="Seed for sample selection and random starts.")(fn)
        fn = click.option("--n", "n", type=count(), default=default_n, show_default=True,
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


def model_settings() -> dict:
    """The --weights/--pretrained/--device values of the running command (defaults outside click)."""
    ctx = click.get_current_context(silent=True)
    stored = ctx.meta.get(_META, {}) if ctx is not None else {}
    return {"weights": stored.get("weights"), "pretrained": bool(stored.get("pretrained")),
            "device": stored.get("device") or "auto"}


def load_model(model: str, checkpoint: str | None, data: str | None):
    """(model in eval mode on the chosen device, info) — see :func:`regcollide.models.resolve.resolve_model`."""
    from regcollide.models.resolve import resolve_model

    return resolve_model(model, checkpoint, data, **model_settings())


def check_labels(labels, num_classes: int | None, data: str) -> None:
    """Refuse labels the model cannot output (a 10-class model on 1000-class data): one line, no traceback."""
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise click.ClickException(f"dataset '{data}' has label {int(labels.max())}, but the model has only "
                                   f"{num_classes} classes: use data with labels in [0, {num_classes}).")


def load_model_and_data(model: str, checkpoint: str | None, data: str, n: int, seed: int = 0,
                        split: str = "test"):
    """(model, images, labels, info): ``n`` images of ``data``'s ``split``, fitted to the model's input geometry
    (resize + center-crop for images of another size) and moved to the model's device.

    Labels of a dataset with fewer classes than the model (mnist digits on an ImageNet model) are kept as
    they are; evaluators that need the model's own labels use its clean predictions instead.
    """
    from regcollide.data import adapt_images, load_tensors

    net, info = load_model(model, checkpoint, data)
    chans, size, _ = info["input_shape"]
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.get_parameter_source("data") == click.core.ParameterSource.COMMANDLINE:
        info["data"] = data  # an explicit --data wins over the run's dataset, never silently ignored
    images, labels = load_tensors(info.get("data") or data, split, n=n, seed=seed, image_size=size)
    if len(labels) < n:  # the split is smaller than asked for: say so instead of silently using fewer
        click.echo(f"warning: --n {n} is more than the {len(labels)} images of {info.get('data') or data}'s "
                   f"{split} split; using all {len(labels)}", err=True)
    check_labels(labels, info.get("num_classes"), info.get("data") or data)
    images = adapt_images(images, chans, size)
    device = next(iter(net.parameters()), images).device
    return net, images.to(device), labels.to(device), info


def ensure_out(out: str) -> Path:
    """Create the output folder and prove it writable, before any work: one line if it is not."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise click.ClickException(f"cannot write to output folder {out}: {err.strerror or err}; "
                                   "choose a writable --out") from None
    return path


def check_sample_memory(samples: int, input_shape: tuple[int, ...], param_hint: str) -> None:
    """Refuse a polytope sample count whose points cannot fit in this machine's memory (Li, Zhang & Malik,
    NeurIPS 2019, measure each polytope on ``samples`` convex combinations): one line, not an allocator error."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the allocator will have to say it
        return
    per_sample = math.prod(input_shape) * BYTES_PER_SAMPLE_VALUE
    if samples * per_sample > total:
        shape = "x".join(str(d) for d in input_shape)
        raise click.BadParameter(f"{samples} samples of {shape} inputs need about {samples * per_sample / 1e9:.0f} GB, "
                                 f"more than this machine's {total / 1e9:.0f} GB; use at most {total // per_sample}",
                                 param_hint=param_hint)


def usable_entries(entries_dir: str) -> list[dict]:
    """The well-formed eval entries in ``entries_dir``; each malformed one is reported in one line and skipped."""
    from regcollide.reports.entries import load_entries

    problems: list[str] = []
    entries = load_entries(entries_dir, problems)
    for line in problems:
        click.echo(f"skipped: {line}", err=True)
    if not entries:
        raise click.ClickException(f"no usable eval entries in {entries_dir}; write them with "
                                   "`regcollide eval RUN... --out DIR`")
    return entries

