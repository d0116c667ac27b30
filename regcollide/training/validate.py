"""Typed dataclasses from plain data: strict type checks, ranges, choices and finite numbers.

The machinery behind :mod:`regcollide.training.config`: an unknown key, a wrong type, a NaN or inf, or an
out-of-range value raises :class:`ConfigError`, whose one-line message names the key and, for a typo, the
nearest valid key (``difflib``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from typing import Any

MAX_INT = 10**9  # the largest integer any config field accepts, as for the command line's counts


class ConfigError(ValueError):
    """A config problem the user can fix; the message is one line that names the key."""


def value_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, **extra: Any) -> dict:
    """Field metadata for a numeric range check (``lo_open`` excludes the lower bound)."""
    return {"lo": lo, "hi": hi, "lo_open": lo_open, **extra}


def choices(*options: str) -> dict:
    return {"choices": options}


def fail(key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {message}" if key else message)


def suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, nothing else is cast."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _coerce(key, value, inner)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (list, tuple):  # list[T] or tuple[T, ...]; YAML gives lists for both
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            fail(key, f"expected a list, got {_shown(value)}")
        return origin(_coerce(f"{key}.{i}", v, item_tp) for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            fail(key, f"expected a mapping, got {_shown(value)}")
        _check_params(key, value)
        return dict(value)
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return _finite(key, value)
    if tp is bool and not isinstance(value, bool):
        fail(key, f"expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        fail(key, f"expected an integer, got {value!r}")
    if not isinstance(value, tp):
        fail(key, f"expected {_type_name(tp)}, got {type(value).__name__} {_shown(value)}")
    return value


# Values quoted in messages are cut short: a YAML alias bomb (lists sharing anchors) must never be expanded.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 2, 4, 4, 80


def _shown(value: Any) -> str:
    return _SHORT.repr(value)


def _finite(key: str, value: int | float | str) -> float:
    """A float field's value; NaN and inf are refused (no config field has a meaning for them)."""
    try:  # PyYAML reads 1e-3 (no dot) as a string; accept any spelling float() understands
        number = float(value)
    except ValueError:
        fail(key, f"expected float, got str {value!r}")
    if not math.isfinite(number):
        fail(key, f"must be a finite number, got {value!r}")
    return number


def _check_params(key: str, value: Any, seen: set[int] | None = None) -> None:
    """Regularizer params: every number, however deeply nested, must be finite, and no integer beyond 10^9.

    ``seen`` holds the containers already checked: YAML anchors share one list many times over, and an alias
    bomb would otherwise be walked billions of times.
    """
    seen = set() if seen is None else seen
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            return
        seen.add(id(value))
    if isinstance(value, dict):
        for name, item in value.items():
            _check_params(f"{key}.{name}", item, seen)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_params(f"{key}.{i}", item, seen)
    elif isinstance(value, float) and not math.isfinite(value):
        fail(key, f"must be a finite number, got {value!r}")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        fail(key, f"value {_shown(value)} is implausibly large; must be at most {MAX_INT:,} in size")


def _check_meta(key: str, value: Any, meta: typing.Mapping) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), meta["choices"], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        fail(key, f"invalid value {value!r}; {hint}choose from {', '.join(meta['choices'])}")
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_INT:
        # no count, size, step or seed here means anything past 10^9 (the command line's bound too); a huge
        # value would only run for ever or overflow deep inside torch
        fail(key, f"value {_shown(value)} is implausibly large; must be at most {MAX_INT:,}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        bound = f"> {lo}" if meta.get("lo_open") else f">= {lo}"
        fail(key, f"value {value!r} out of range; must be {bound}")
    if hi is not None and value > hi:
        fail(key, f"value {value!r} out of range; must be <= {hi}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(prefix, f"expected a mapping of {cls.__name__} keys, got {_shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            fail(full, f"unknown key; {suggest(str(key), list(fields))}")
    kwargs = {}
    for name, value in data.items():
        full = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(full, value, hints[name])
        _check_meta(full, kwargs[name], fields[name].metadata)
    return cls(**kwargs)
