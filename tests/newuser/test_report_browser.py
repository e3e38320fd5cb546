"""The HTML evaluation report in headless Chromium at 1,400 px: every table
fits, no number wraps, fairness only when asked, every setting recorded.

Skipped, saying why, without Debian's Chromium or the `playwright` package
(as tests/dashboard/test_browser.py). With `SIEVE_SCREENSHOTS` naming a
folder the page is saved there as `report.png` (docs/img holds it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sieve.cli import app

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = os.environ.get("SIEVE_SCREENSHOTS")
WIDTH = 1400

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
if not CHROMIUM.is_file():
    pytest.skip(f"Debian's Chromium is not at {CHROMIUM}", allow_module_level=True)

ARGS = [
    "--data",
    "synthetic:users=300,items=200,seed=3",
    "--models",
    "popular,itemknn,ease,als,bpr",
]


def _report(folder: Path, *extra: str) -> Path:
    page = folder / "report.html"
    result = CliRunner().invoke(app, ["evaluate", *ARGS, *extra, "--report", str(page)])
    assert result.exit_code == 0, result.output
    return page


def _settings(html_path: Path) -> dict[str, Any]:
    text = html_path.read_text()
    start = text.index('<script type="application/json" id="data">') + len(
        '<script type="application/json" id="data">'
    )
    import html

    data: dict[str, Any] = json.loads(html.unescape(text[start : text.index("</script>", start)]))
    return dict(data["settings"])


def test_the_report_fits_a_laptop_screen(tmp_path: Path) -> None:
    grouped = _report(
        tmp_path, "--models", "popular,itemknn,ease,bpr", "--group-by", "group", "--seed", "7"
    )
    assert _settings(grouped)["group_by"] == "group" and _settings(grouped)["seed"] == 7
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.goto(grouped.as_uri())
            assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
            # every table fits its box: nothing to scroll sideways at 1,400 px
            over = page.eval_on_selector_all(
                ".scroll", "els => els.filter(e => e.scrollWidth > e.clientWidth).length"
            )
            assert over == 0
            # no number wraps: each line of a cell (its text, each of its divs)
            # lies on one line box, whatever its inline parts (a <sub>)
            wrapped = page.eval_on_selector_all(
                "td",
                """tds => tds.filter(td => [...td.childNodes].some(n => {
                    const r = document.createRange(); r.selectNodeContents(n);
                    const rects = [...r.getClientRects()];
                    // a wrapped line starts a second box below the first, at the left
                    return rects.some(q => q.top >= rects[0].bottom - 1); }))
                    .map(td => td.innerText)""",
            )
            assert wrapped == [], wrapped
            assert page.locator("#fairness").count() == 1
            assert "grouped by group" in page.inner_text("body")
            if SCREENSHOTS:
                Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(SCREENSHOTS) / "report.png"), full_page=False)
            ungrouped = _report(tmp_path / "plain", "--models", "popular,itemknn")
            page.goto(ungrouped.as_uri())
            assert page.locator("#fairness").count() == 0
            assert "group gap" not in page.inner_text("body")
            assert _settings(ungrouped)["group_by"] is None
        finally:
            browser.close()
