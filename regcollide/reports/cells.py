"""Escaping of untrusted text (run names, recipes, flags) for each output format of the reports.

Eval entries are user files, so any string in them may be hostile. CSV cells that a spreadsheet would
evaluate as a formula are neutralized as OWASP's "CSV injection" guidance recommends (a leading ``'``);
Markdown cells cannot break out of their table row; HTML is escaped by the HTML writer itself.
"""

from __future__ import annotations

from typing import Any

# Leading characters that make Excel, LibreOffice or Google Sheets treat a cell as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV value: None -> empty, numbers unchanged, text that could start a formula prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str):
        return value
    return "'" + value if value.startswith(_FORMULA_START) else value


def markdown_cell(text: str) -> str:
    """Text safe inside one Markdown table cell: no row or column breaks, no raw HTML.

    Backslashes are doubled first so a trailing ``\\`` cannot escape our own ``\\|``; newlines become
    spaces (a newline ends the table row); ``<``, ``>`` and ``&`` become entities so a name cannot inject
    HTML into renderers that allow it.
    """
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()


def markdown_line(text: str) -> str:
    """Text for a Markdown heading or paragraph line: one line, no raw HTML."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.splitlines()).strip()
