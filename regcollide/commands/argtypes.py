"""argparse types shared by the scripts (the study runner, the benchmarks): the counterparts of
:mod:`regcollide.commands.types` for the click commands.

A bad value becomes argparse's one usage line (``<prog>: error: argument --x: ...``, exit 2) while the
arguments are parsed, before any model, data or file is touched.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """An integer in [lo, hi]: ``type=int_range(1, 10**6)``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value
    return parse


def positive_finite(text: str) -> float:
    """A finite number > 0 (NaN, inf and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number > 0")
    return value
