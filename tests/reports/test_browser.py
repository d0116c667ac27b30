"""The static leaderboard page in a real headless Chromium (Debian's package, driven by Playwright).

CI installs Chromium when missing (see .ci/run). Playwright's own browser download is never used: the
test launches the system binary.
"""

from __future__ import annotations

import os
import shutil

import pytest
from test_leaderboard import fake_entry

from regcollide.reports.leaderboard import write_leaderboard

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("REGCOLLIDE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page():
    from playwright import sync_api
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    "or set REGCOLLIDE_CHROMIUM")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # A laptop-sized window: the page must fit 1400 px without horizontal scrolling.
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        # Fail on any attempt to load something from outside the file: the page must be self-contained.
        requests: list[str] = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.requests = requests
        yield pg
        browser.close()


def _column(pg, key: str, table: str = "#leaderboard-1") -> list[str]:
    index = pg.eval_on_selector_all(f"{table} thead tr.cols th",
                                    f"ths => ths.findIndex(th => th.dataset.key === '{key}')")
    return pg.eval_on_selector_all(f"{table} tbody tr",
                                   f"rows => rows.map(r => r.cells[{index}].getAttribute('data-value'))")


def _names(pg, table: str = "#leaderboard-1") -> list[str]:
    return pg.eval_on_selector_all(f"{table} tbody tr", "rows => rows.map(r => r.dataset.name)")


def _page_width(pg) -> int:
    return pg.evaluate("document.documentElement.scrollWidth")


def test_rows_render_and_header_click_resorts(page, tmp_path):
    entries = [fake_entry("alpha", aa=0.10, pgd=0.2, nu=3, clean=0.90, pgd_flags=("zero_gradients",)),
               fake_entry("beta", aa=0.40, pgd=0.5, nu=1, clean=0.97),
               fake_entry("gamma", aa=0.25, pgd=0.3, nu=2, clean=0.80),
               fake_entry("delta", aa=None, pgd=0.05, nu=10, clean=0.99)]
    html_path = write_leaderboard(entries, tmp_path)["html"]
    page.goto(html_path.as_uri())

    assert _names(page) == ["beta", "gamma", "alpha", "delta"]   # ranked by AutoAttack, PGD-only fallback last
    assert page.locator("#leaderboard-1 tbody tr").first.is_visible()
    assert "zero_gradients" in page.inner_text("#leaderboard-1")

    header = page.locator("#leaderboard-1 thead th[data-key=clean_acc]")
    header.click()
    clean = [float(v) for v in _column(page, "clean_acc")]
    assert clean == sorted(clean) and clean[0] == pytest.approx(80.0)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    clean = [float(v) for v in _column(page, "clean_acc")]
    assert clean == sorted(clean, reverse=True)
    assert header.get_attribute("aria-sort") == "descending"

    # Numeric, not lexicographic: nu=10 sorts after nu=3 ascending.
    page.locator("#leaderboard-1 thead th[data-key=nu]").click()
    assert [int(v) for v in _column(page, "nu")] == [1, 2, 3, 10]

    # Missing values stay last whichever way the column is sorted.
    aa = page.locator("#leaderboard-1 thead th[data-key=autoattack_acc]")
    aa.click()
    assert _column(page, "autoattack_acc")[-1] == ""
    aa.click()
    assert _column(page, "autoattack_acc")[-1] == ""

    assert all(u.startswith("file://") for u in page.requests), page.requests


def _zoo(n: int = 20) -> list[dict]:
    """Long names and recipes, many rows, every column filled: the widest realistic table."""
    out = []
    for i in range(n):
        e = fake_entry(f"mlp-w{i}-singular+decorrelation-seed{i}", aa=0.01 * i, pgd=0.02 * i, nu=100 + i,
                       mu=1000 + i, nullity=123456 + i, first=98765, clean=0.9,
                       regs=("singular", "decorrelation", "distill"), pgd_flags=("unstable_restarts",))
        e["audit"]["n_weights"] = 1234
        e["autoattack"] = {**(e["autoattack"] or {}), "n": 10000, "version": "standard"}
        e["pgd"]["n"] = 10000
        out.append(e)
    return out


def test_table_fits_1400px_and_collision_columns_collapse(page, tmp_path):
    html_path = write_leaderboard(_zoo(), tmp_path)["html"]
    page.goto(html_path.as_uri())
    assert page.viewport_size["width"] == 1400
    table = page.locator("#leaderboard-1")
    assert _page_width(page) <= 1400, "horizontal overflow at 1400 px"
    assert table.bounding_box()["x"] + table.bounding_box()["width"] <= 1400
    # Every column is really shown (a hidden column would fit trivially).
    visible = page.eval_on_selector_all("#leaderboard-1 tr.cols th[data-key]",
                                        "ths => ths.filter(t => t.offsetWidth > 0).length")
    assert visible == len(page.eval_on_selector_all("#leaderboard-1 tr.cols th[data-key]", "ths => ths")) == 26
    assert "Robust %" not in page.inner_text("#leaderboard-1 thead")   # duplicated AutoAttack %, dropped

    nu = page.locator("#leaderboard-1 thead th[data-key=nu]")
    toggle = page.locator("#leaderboard-1 button.toggle")
    name = page.locator("#leaderboard-1 thead th[data-key=name]")
    name_open = name.bounding_box()["width"]
    assert nu.is_visible() and toggle.get_attribute("aria-expanded") == "true"
    toggle.click()
    hidden = [k for k in ("nu", "mu", "n_weights", "total_nullity", "first_nullity", "nullspace_exact",
                          "polytope_success", "distance_ratio")
              if not page.locator(f"#leaderboard-1 thead th[data-key={k}]").is_visible()]
    assert len(hidden) == 8 and toggle.get_attribute("aria-expanded") == "false"
    assert not page.locator("#leaderboard-1 tbody td.g-collision").first.is_visible()
    assert page.locator("#leaderboard-1 thead th[data-key=autoattack_acc]").is_visible()
    # The collapsed group keeps a one-column stub, so the group headers stay over their own columns.
    checks = page.locator("#leaderboard-1 tr.groups th.g-flags").bounding_box()
    flags_col = page.locator("#leaderboard-1 thead th[data-key=flags]").bounding_box()
    assert checks["x"] == pytest.approx(flags_col["x"], abs=1) and checks["width"] == pytest.approx(
        flags_col["width"], abs=1)
    # The freed width goes to the wrapped text columns (long run names need fewer lines).
    assert name.bounding_box()["width"] > name_open and _page_width(page) <= 1400
    # Sorting still works on the collapsed table, and the columns come back with their values.
    page.locator("#leaderboard-1 thead th[data-key=autoattack_acc]").click()
    assert [float(v) for v in _column(page, "autoattack_acc")] == sorted(float(v) for v in
                                                                         _column(page, "autoattack_acc"))
    toggle.click()
    assert nu.is_visible() and toggle.get_attribute("aria-expanded") == "true"
    assert [int(v) for v in _column(page, "nu")] == list(range(100, 120))


def test_threat_models_get_separate_tables_sorted_independently(page, tmp_path):
    entries = [fake_entry("a", aa=0.3, pgd=0.4), fake_entry("b", aa=0.5, pgd=0.6),
               fake_entry("strong", aa=0.9, pgd=0.9), fake_entry("c", aa=0.1, pgd=0.2)]
    entries[2]["pgd"]["eps"] = 0.3   # a larger ε: never ranked next to the ε = 0.1 runs
    page.goto(write_leaderboard(entries, tmp_path)["html"].as_uri())
    labels = page.eval_on_selector_all("section h2", "hs => hs.map(h => h.textContent)")
    assert labels == ["mnist5k, linf, ε = 0.1", "mnist5k, linf, ε = 0.3"]
    assert _names(page, "#leaderboard-1") == ["b", "a", "c"] and _names(page, "#leaderboard-2") == ["strong"]
    page.locator("#leaderboard-1 thead th[data-key=name]").click()
    assert _names(page, "#leaderboard-1") == ["a", "b", "c"] and _names(page, "#leaderboard-2") == ["strong"]
    # Each table collapses on its own.
    page.locator("#leaderboard-2 button.toggle").click()
    assert page.locator("#leaderboard-1 thead th[data-key=nu]").is_visible()
    assert not page.locator("#leaderboard-2 thead th[data-key=nu]").is_visible()


def test_hostile_names_are_text_not_markup(page, tmp_path):
    evil = '<img src=x onerror="document.title=\'pwned\'">\n=cmd|\' /C calc\'!A0'
    page.goto(write_leaderboard([fake_entry(evil, aa=0.2, pgd=0.3)], tmp_path)["html"].as_uri())
    assert page.title() != "pwned"
    assert page.eval_on_selector_all("#leaderboard-1 img", "imgs => imgs.length") == 0
    assert _names(page) == [evil]
