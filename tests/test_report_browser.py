"""report.html in a real browser (headless Chromium through Playwright): it opens from disk with no network
request and no console error, every plot renders as an interactive Plotly figure, a header click sorts a table
(numbers with their units), the filter hides the rows it does not match, and hovering a Pareto point names the run
with its intervals. A screenshot is written (to $PEFTBENCH_SCREENSHOTS when set, for a person to look at).

Skipped where Playwright or Chromium is missing (`make test` installs both: tools/ensure_chromium.sh); under
CI=true a missing browser fails instead, so CI cannot pass without running it."""

import os
import re
import shutil
from pathlib import Path

import pytest
from test_report import _fixture

from peftbench.report import build


def _chromium() -> str | None:
    return next((p for b in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(b))), None)


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    exe = _chromium()
    if sync_playwright is None or exe is None:
        missing = "playwright" if sync_playwright is None else "chromium"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing: make test installs it (tools/ensure_chromium.sh)")
        pytest.skip(f"{missing} is not installed")
    return sync_playwright, exe


def _numbers(texts: list[str]) -> list[float]:
    units = {"B": 1, "KB": 1e3, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    out = []
    for t in texts:
        m = re.match(r"\**([\d,.]+)\s*([kKMG]?B)?", t.strip())
        out.append(float(m.group(1).replace(",", "")) * units.get(m.group(2) or "B", 1))
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_playwright, exe = _browser_or_skip()
    folder = _fixture(tmp_path_factory.mktemp("browser") / "study")
    html = build.build_report(folder)["html"]
    pngs = sorted((folder / "plots").glob("*.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1300, "height": 1000})
        errors, requests = [], []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else requests.append(r.url))
        pg.goto(html.as_uri())
        pg.wait_for_selector("div.plot .main-svg")
        pg.info = {"errors": errors, "requests": requests, "pngs": pngs, "folder": folder}
        yield pg
        pg.evaluate("window.scrollTo(0, 0)")
        shots = Path(os.environ.get("PEFTBENCH_SCREENSHOTS") or folder)
        shots.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(shots / "report-top.png"))
        pg.screenshot(path=str(shots / "report-full.png"), full_page=True)
        assert (shots / "report-full.png").read_bytes()[:4] == b"\x89PNG"
        browser.close()


def test_the_page_opens_offline_with_no_console_error_and_every_plot_drawn(page):
    assert page.info["requests"] == [] and page.info["errors"] == []
    n = len(page.info["pngs"])
    assert n >= 7
    assert page.locator("div.plot").count() == n  # one interactive figure per PNG, no PNG left in the page
    assert page.locator("div.plot .main-svg").count() >= n and page.locator("img").count() == 0
    assert page.locator("#verdicts h3").all_inner_texts()[:2] == [
        "builtin:m · classification",
        "random:gpt2 · summarization",
    ]


def test_a_header_click_sorts_the_table_by_its_numbers_and_a_second_click_reverses_it(page):
    table = page.locator("table.sortable").first
    col = [t.strip() for t in table.locator("thead th").all_inner_texts()].index("storage")
    cells = table.locator(f"tbody tr td:nth-child({col + 1})")
    before = cells.all_inner_texts()
    assert "–" in before  # the zero-shot row ships nothing
    table.locator("thead th").nth(col).click()
    up = cells.all_inner_texts()
    measured = [t for t in before if t != "–"]
    assert _numbers(up[:-1]) == sorted(_numbers(measured)) and up[-1] == "–"  # 20 B < 80 B < 4 KB, not as text
    assert up != before
    table.locator("thead th").nth(col).click()
    down = cells.all_inner_texts()
    assert _numbers(down[:-1]) == sorted(_numbers(measured), reverse=True) and down[-1] == "–"


def test_the_filter_hides_every_row_that_does_not_match(page):
    page.fill("#filter-all", "lora")
    rows = page.locator("table.sortable").first.locator("tbody tr")
    shown = [rows.nth(i).inner_text() for i in range(rows.count()) if rows.nth(i).is_visible()]
    assert shown and all("lora" in r for r in shown) and len(shown) < rows.count()
    page.fill("#filter-all", "")
    assert all(rows.nth(i).is_visible() for i in range(rows.count()))


def test_hovering_a_pareto_point_names_the_run_and_its_intervals(page):
    plots = page.locator("div.plot")
    i = next(i for i in range(plots.count()) if "pareto" in (plots.nth(i).get_attribute("title") or ""))
    plot = plots.nth(i)
    plot.scroll_into_view_if_needed()
    for point in plot.locator(".scatterlayer .point").all():
        box = point.bounding_box()  # plotly hovers by the mouse's position over the plot, not by the element
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(50)
        text = " ".join(t or "" for t in plot.locator(".hoverlayer").all_text_contents())
        if re.search(r"(lora|ia3|full)", text):  # the hover label's lines are joined without a space
            assert re.search(r"\[[-\d.,]+, [-\d.,]+\]", text), text  # a mean with its 95 % interval
            return
    pytest.fail("no point of the Pareto plot showed its run on hover")
