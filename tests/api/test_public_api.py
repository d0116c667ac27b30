"""The public API: every exported name resolves, importing the package stays cheap, and the README's
Python snippets run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import regcollide

REPO = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves_to_a_documented_object():
    for name in regcollide.__all__:
        value = getattr(regcollide, name)
        assert value.__doc__, f"regcollide.{name} has no docstring"


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError):
        regcollide.no_such_thing  # noqa: B018


def test_importing_the_package_does_not_import_torch():
    code = "import sys, regcollide; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_all_is_printed_by_the_documented_one_liner():
    code = "import regcollide as r; print(r.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "create_model" in out.stdout and "evaluate_model" in out.stdout


def _readme_snippets() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(_readme_snippets()) >= 4


@pytest.mark.slow
def test_readme_python_snippets_run_in_order(tmp_path, monkeypatch):
    # One namespace for all snippets, as a notebook would run them top to bottom, in a scratch folder.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, snippet in enumerate(_readme_snippets()):
        exec(compile(snippet, f"README.md python snippet {i + 1}", "exec"), namespace)  # noqa: S102
