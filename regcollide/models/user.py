"""A user's own model: ``module:callable`` (``mypkg.nets:make_net``) or ``path/to/file.py:callable``.

The factory is the user's own code, imported and called like any Python they run; it is called with the
keyword arguments it accepts among ``num_classes``, ``in_chans``, ``img_size`` and ``width``, and must return
an ``nn.Module`` that takes [0, 1] images (put any normalization inside it).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
SCHEMES = ("timm", "tv", "rb", "hf-hub")


def is_user_factory(name: str) -> bool:
    """True for ``module:callable`` and ``file.py:callable`` (not the ``timm:``/``tv:``/``rb:``/``hf-hub:`` forms)."""
    module, sep, attr = name.rpartition(":")
    if not sep or name.split(":", 1)[0] in SCHEMES or not _DOTTED.match(attr):
        return False
    return bool(_DOTTED.match(module)) or module.endswith(".py")


def _import(module: str):
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"model file '{module}' does not exist.")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)  # a module next to where the user runs the command, as `python -m` would find
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ValueError(f"cannot import module '{module}' for MODEL '{module}:...': {err}. Run from the folder "
                         "holding it, set PYTHONPATH, or name the file as path/to/file.py:callable.") from err


def load_factory(name: str) -> Callable[..., nn.Module]:
    module, _, attr = name.rpartition(":")
    factory = getattr(_import(module), attr, None)
    if not callable(factory):
        raise ValueError(f"'{attr}' in '{module}' is not a callable model factory.")
    return factory


def create_user_model(name: str, **geometry) -> nn.Module:
    """Call the factory with the geometry keywords it accepts; refuse anything but an ``nn.Module``."""
    factory = load_factory(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        raise ValueError(f"'{name}' has no inspectable signature; it is not a model factory.") from None
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in geometry.items() if v is not None and (takes_any or k in params)}
    try:  # refuse a callable that needs other arguments (e.g. `os:system`) before calling it
        signature.bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"model factory '{name}' cannot be called with only the geometry keywords "
                         f"{sorted(geometry)}: {err}.") from None
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory '{name}' returned {type(model).__name__}, not a torch.nn.Module.")
    return model
