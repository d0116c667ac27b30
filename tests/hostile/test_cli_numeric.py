"""Property tests over every numeric option of every command: NaN, ±inf and out-of-range values are
refused at the edge with a usage error (one ``Error:`` line, exit code 2), before any work starts.

The commands are discovered from the click tree, so a new command or option is covered automatically.
"""

from __future__ import annotations

import math

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from regcollide.cli import main

NON_FINITE = ("nan", "inf", "-inf", "NaN", "+inf")


def _walk(group: click.Group, ctx: click.Context, path: tuple[str, ...]):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _walk(command, click.Context(command, parent=ctx, info_name=name), path + (name,))
        else:
            yield path + (name,), command


def _numeric_options() -> list[tuple[tuple[str, ...], click.Option]]:
    root = click.Context(main, info_name="regcollide")
    found = []
    for path, command in _walk(main, root, ()):
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (click.types.FloatParamType,
                                                                           click.types.IntParamType)):
                found.append((path, param))
    return found


OPTIONS = _numeric_options()
FLOAT_OPTIONS = [(p, o) for p, o in OPTIONS if isinstance(o.type, click.types.FloatParamType)]
IDS = [f"{' '.join(p)} {o.opts[-1]}" for p, o in OPTIONS]
FLOAT_IDS = [f"{' '.join(p)} {o.opts[-1]}" for p, o in FLOAT_OPTIONS]


def test_the_walk_finds_the_commands():
    commands = {" ".join(p) for p, _ in OPTIONS}
    assert {"audit", "attack pgd", "attack nullspace", "attack polytope"} <= commands


@pytest.mark.parametrize(("path", "option"), FLOAT_OPTIONS, ids=FLOAT_IDS)
@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_floats_are_refused(path, option, value):
    with pytest.raises(click.BadParameter):
        option.type.convert(value, option, None)


@pytest.mark.parametrize(("path", "option"), OPTIONS, ids=IDS)
def test_every_numeric_option_declares_a_lower_bound(path, option):
    # A count, a budget or a tolerance below zero never makes sense here; the type must say so, so that
    # `--n -1` or `--eps -0.1` fails at parse time instead of deep inside the run.
    assert getattr(option.type, "min", None) is not None, f"{option.opts[-1]} of `{' '.join(path)}` has no min"


@pytest.mark.parametrize(("path", "option"), OPTIONS, ids=IDS)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30)))
@settings(max_examples=25, deadline=None)
def test_conversion_returns_a_value_in_range_or_refuses(path, option, value):
    try:
        converted = option.type.convert(str(value), option, None)
    except click.BadParameter:
        return
    assert math.isfinite(converted)
    low, high = option.type.min, getattr(option.type, "max", None)
    assert converted >= low and (high is None or converted <= high)


@pytest.mark.parametrize(("path", "option"), FLOAT_OPTIONS[:6], ids=FLOAT_IDS[:6])
def test_the_command_line_prints_one_error_line_without_a_traceback(path, option, tmp_path):
    argv = list(path) + (["mlp"] if path[-1] in ("audit", "pgd", "nullspace", "polytope") else []) + \
        [option.opts[-1], "nan"]
    result = CliRunner().invoke(main, argv, catch_exceptions=True)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
