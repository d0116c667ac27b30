"""Click parameter types shared by every command: numbers that must be finite and in range.

``click.FloatRange`` lets NaN through (every comparison with NaN is false) and has no notion of
"finite", so a NaN tolerance or an infinite ε would reach the library and produce silently wrong numbers.
"""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloat(click.FloatRange):
    """A float in [min, max] (bounds optional, open with ``min_open``/``max_open``) that is never NaN or ±inf."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.types.FloatParamType.convert(self, value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def finite(min: float | None = 0.0, max: float | None = None, min_open: bool = False,
           max_open: bool = False) -> FiniteFloat:
    """Shorthand used in option declarations: ``type=finite(0, 1, min_open=True)``."""
    return FiniteFloat(min=min, max=max, min_open=min_open, max_open=max_open)


def count(min: int = 1, max: int | None = 10**9) -> click.IntRange:
    """A count of images, steps or samples: at least ``min`` and below an absurd upper bound."""
    return click.IntRange(min=min, max=max)
