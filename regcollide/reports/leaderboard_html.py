"""The leaderboard as one self-contained HTML file: inline CSS and JS, no network assets.

Clicking a column header sorts the rows by that column (click again to reverse). Each cell carries its raw
value in ``data-value`` so numbers sort as numbers, and missing values always sort last.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
td.text, th.text { text-align: left; }
th { cursor: pointer; background: #f4f4f4; user-select: none; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tr:hover td { background: #fafaf0; }
td.flags { color: #b00; white-space: normal; max-width: 30em; font-size: 12px; text-align: left; }
p.note { color: #555; font-size: 13px; max-width: 60em; }
"""

# Sort numerically when both values are numbers, else as text; empty values last in either direction.
_JS = """
(function () {
  var table = document.getElementById("leaderboard");
  var headers = table.tHead.rows[0].cells;
  function key(cell) {
    var raw = cell.getAttribute("data-value");
    if (raw === null || raw === "") return null;
    var num = Number(raw);
    return isNaN(num) ? raw.toLowerCase() : num;
  }
  function sortBy(index, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index]), y = key(b.cells[index]);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < headers.length; i++) headers[i].removeAttribute("aria-sort");
    headers[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  Array.prototype.forEach.call(headers, function (th, index) {
    th.addEventListener("click", function () {
      var descending = th.getAttribute("aria-sort") === "ascending";
      sortBy(index, descending);
    });
  });
})();
"""


def _raw(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def render_html(rows: list[dict], columns: list, format_cell: Callable[[Any, Any], str],
                footnote: str | None, title: str) -> str:
    """The whole page as a string. ``columns`` are leaderboard ``Column`` objects."""
    head = "".join(
        f'<th data-key="{c.key}" class="{"num" if c.numeric else "text"}" title="click to sort">'
        f"{html.escape(c.header)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            shown = format_cell(c, r[c.key])
            if c.key == "robust_acc" and r["_score_source"] == "pgd":
                shown += " †"
            css = "flags" if c.key == "flags" else ("num" if c.numeric else "text")
            cells.append(f'<td class="{css}" data-value="{html.escape(_raw(r[c.key]))}">'
                         f"{html.escape(shown)}</td>")
        body.append(f'<tr data-name="{html.escape(str(r["name"]))}">' + "".join(cells) + "</tr>")
    notes = ["Ranked by AutoAttack robust accuracy (standard version). Click a header to sort."]
    if footnote:
        notes.append(footnote)
    meta = json.dumps({"rows": len(rows)})
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<table id="leaderboard" data-meta=\'{html.escape(meta)}\'><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
        + f"<script>{_JS}</script></body></html>\n"
    )
