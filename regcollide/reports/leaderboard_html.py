"""The leaderboard as one self-contained HTML file: inline CSS and JS, no network assets.

One table per threat model. Columns sit in groups (model | threat model | clean/robust | collisions |
checks) under a group header row; the collision group collapses to one narrow column with its toggle
button, and the page fits a 1400-px-wide window either way (text cells wrap, numbers do not). Clicking a
column header sorts that table by the column (click again to reverse). Each cell carries its raw value in
``data-value`` so numbers sort as numbers, and missing values always sort last.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from regcollide.reports.leaderboard_columns import GROUPS

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em 0.75em; color: #222; font-size: 13px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 1.5em; }
table.leaderboard { border-collapse: collapse; font-size: 12px; max-width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 3px; text-align: right; vertical-align: top; }
td.num { white-space: nowrap; }
td.text, th.text { text-align: left; overflow-wrap: anywhere; min-width: 4em; }
td.c-name, td.c-training { min-width: 7em; } td.c-model { min-width: 5em; }
td.c-norm, td.c-autoattack_version, td.c-nullspace_exact { white-space: nowrap; min-width: 0; }
th { background: #f4f4f4; font-weight: 600; }
tr.cols th { cursor: pointer; user-select: none; overflow-wrap: normal; hyphens: auto; }
tr.groups th { text-align: center; background: #e8e8ee; border-left: 2px solid #fff; }
th.first, td.first { border-left: 2px solid #ccc; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tr:hover td { background: #fafaf0; }
th.flags { text-align: left; }
td.flags { color: #b00; font-size: 11px; text-align: left; overflow-wrap: anywhere; min-width: 5em; }
button.toggle { font: inherit; cursor: pointer; border: 1px solid #aaa; background: #fff; border-radius: 3px; }
table.collapsed .g-collision.member { display: none; }
.stub { display: none; color: #888; text-align: center; }
table.collapsed .stub { display: table-cell; }
p.note { color: #555; font-size: 12px; max-width: 70em; }
"""

# Sort numerically when both values are numbers, else as text; empty values last in either direction.
# The collision toggle hides the group's cells and shrinks its group header to one column.
_JS = """
(function () {
  function key(cell) {
    var raw = cell.getAttribute("data-value");
    if (raw === null || raw === "") return null;
    var num = Number(raw);
    return isNaN(num) ? raw.toLowerCase() : num;
  }
  function setup(table) {
    var headers = table.tHead.rows[table.tHead.rows.length - 1].cells;
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
      if (!th.dataset.key) return;   // the collapsed group's stub column does not sort
      th.addEventListener("click", function () {
        sortBy(index, th.getAttribute("aria-sort") === "ascending");
      });
    });
    var toggle = table.querySelector("button.toggle");
    if (!toggle) return;
    var group = toggle.parentNode, span = group.getAttribute("colspan");
    toggle.addEventListener("click", function () {
      var collapse = !table.classList.contains("collapsed");
      table.classList.toggle("collapsed", collapse);
      group.setAttribute("colspan", collapse ? "1" : span);
      toggle.setAttribute("aria-expanded", collapse ? "false" : "true");
      toggle.textContent = collapse ? toggle.dataset.show : toggle.dataset.hide;
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.leaderboard"), setup);
})();
"""


def _raw(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _header_html(header: str) -> str:
    # Break opportunities inside long headers, so the column is as narrow as its numbers.
    return html.escape(header).replace("AutoAttack", "Auto&shy;Attack").replace("(", "<wbr>(")


def _classes(column: Any, first_in_group: bool) -> str:
    kind = "flags" if column.key == "flags" else ("num" if column.numeric else "text")
    return f"{kind} c-{column.key} g-{column.group} member" + (" first" if first_in_group else "")


def _group_header(columns: list) -> str:
    cells, start = [], 0
    while start < len(columns):
        group = columns[start].group
        end = start
        while end < len(columns) and columns[end].group == group:
            end += 1
        span = end - start
        label = html.escape(GROUPS.get(group, group))
        if group == "collision":
            label = (f'<button class="toggle" aria-expanded="true" data-hide="{label} ◂ hide" '
                     f'data-show="{label} ▸ {span} hidden" title="show or hide the collision columns">'
                     f"{label} ◂ hide</button>")
        cells.append(f'<th colspan="{span}" class="grp g-{group} first">{label}</th>')
        start = end
    return '<tr class="groups">' + "".join(cells) + "</tr>"


def _stub_after(columns: list) -> int | None:
    """Index of the last collision column: a collapsed group keeps one narrow stub column after it, so the
    group header still has a column under it and the other groups stay aligned."""
    indices = [i for i, c in enumerate(columns) if c.group == "collision"]
    return indices[-1] if indices else None


def _table(index: int, rows: list[dict], columns: list, format_cell: Callable[[Any, Any], str]) -> str:
    firsts = {i for i, c in enumerate(columns) if i == 0 or columns[i - 1].group != c.group}
    stub = _stub_after(columns)
    head = "".join(
        f'<th data-key="{c.key}" class="{_classes(c, i in firsts)}" title="click to sort">'
        f"{_header_html(c.header)}</th>" + ('<th class="stub first">…</th>' if i == stub else "")
        for i, c in enumerate(columns))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(columns):
            shown = format_cell(c, r[c.key])
            if c.key == "autoattack_acc" and r["_score_source"] == "pgd":
                shown += " †"
            cells.append(f'<td class="{_classes(c, i in firsts)}" data-value="{html.escape(_raw(r[c.key]))}">'
                         f"{html.escape(shown)}</td>" + ('<td class="stub first">…</td>' if i == stub else ""))
        body.append(f'<tr data-name="{html.escape(str(r["name"]))}">' + "".join(cells) + "</tr>")
    return (f'<table class="leaderboard" id="leaderboard-{index}"><thead>{_group_header(columns)}'
            f'<tr class="cols">{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def render_html(tables: list[tuple[str, list[dict], str]], columns: list, format_cell: Callable[[Any, Any], str],
                title: str, note: str) -> str:
    """The whole page. ``tables`` holds (threat-model label, ranked rows, footnote) per threat model."""
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="note">{html.escape(note)} Click a header to sort.</p>']
    for i, (label, rows, footnote) in enumerate(tables, 1):
        parts += [f'<section data-threat="{html.escape(label)}"><h2>{html.escape(label)}</h2>',
                  _table(i, rows, columns, format_cell), f'<p class="note">{html.escape(footnote)}</p></section>']
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(parts) + f"<script>{_JS}</script></body></html>\n")
