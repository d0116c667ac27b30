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
        pg = browser.new_page()
        # Fail on any attempt to load something from outside the file: the page must be self-contained.
        requests: list[str] = []
        pg.on("request", lambda r: requests.append(r.url))
        pg.requests = requests
        yield pg
        browser.close()


def _column(pg, key: str) -> list[str]:
    index = pg.eval_on_selector_all("#leaderboard thead th",
                                    f"ths => ths.findIndex(th => th.dataset.key === '{key}')")
    return pg.eval_on_selector_all("#leaderboard tbody tr",
                                   f"rows => rows.map(r => r.cells[{index}].getAttribute('data-value'))")


def test_rows_render_and_header_click_resorts(page, tmp_path):
    entries = [fake_entry("alpha", aa=0.10, pgd=0.2, nu=3, clean=0.90, pgd_flags=("zero_gradients",)),
               fake_entry("beta", aa=0.40, pgd=0.5, nu=1, clean=0.97),
               fake_entry("gamma", aa=0.25, pgd=0.3, nu=2, clean=0.80),
               fake_entry("delta", aa=None, pgd=0.05, nu=10, clean=0.99)]
    html_path = write_leaderboard(entries, tmp_path)["html"]
    page.goto(html_path.as_uri())

    names = page.eval_on_selector_all("#leaderboard tbody tr", "rows => rows.map(r => r.dataset.name)")
    assert names == ["beta", "gamma", "alpha", "delta"]   # ranked by AutoAttack, PGD-only fallback last
    assert page.locator("#leaderboard tbody tr").first.is_visible()
    assert "zero_gradients" in page.inner_text("#leaderboard")

    header = page.locator("#leaderboard thead th[data-key=clean_acc]")
    header.click()
    clean = [float(v) for v in _column(page, "clean_acc")]
    assert clean == sorted(clean) and clean[0] == pytest.approx(80.0)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    clean = [float(v) for v in _column(page, "clean_acc")]
    assert clean == sorted(clean, reverse=True)
    assert header.get_attribute("aria-sort") == "descending"

    # Numeric, not lexicographic: nu=10 sorts after nu=3 ascending.
    page.locator("#leaderboard thead th[data-key=nu]").click()
    assert [int(v) for v in _column(page, "nu")] == [1, 2, 3, 10]

    # Missing values stay last whichever way the column is sorted.
    aa = page.locator("#leaderboard thead th[data-key=autoattack_acc]")
    aa.click()
    assert _column(page, "autoattack_acc")[-1] == ""
    aa.click()
    assert _column(page, "autoattack_acc")[-1] == ""

    assert all(u.startswith("file://") for u in page.requests), page.requests
