"""report.html in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Checks what a reader does: the page loads with no console error, every link of the table of contents
lands on an element, clicking a table header reorders its rows, the filter box hides rows, and the image
picker changes the images and their scores. A screenshot goes into the test's temporary folder.
Without chromium or playwright the test is skipped here, and fails in CI (``CI`` set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from toy_plugins import small_grid_config

from iqadef.execute import run_grid
from iqadef.report import write_report

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "playwright is not installed (pip install -e '.[test]')"
    if path is None:
        why = "chromium is not installed (apt-get install -y chromium)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def report_page(tmp_path_factory, toy_registry):
    """The report of the toy grid (1 metric x 1 attack x 2 defences, 6 images, 2 with examples)."""
    tmp = tmp_path_factory.mktemp("browser")
    images = tmp / "images"
    images.mkdir()
    _images(images)
    summary = run_grid(
        small_grid_config(tmp, images, toy_registry, str(tmp / "run")), plugins=toy_registry, progress=False
    )
    return write_report(summary.run_dir)["html"]


def _images(folder: Path) -> None:
    """Six smooth 24x24 images (the shape of the shared ``image_dir`` fixture, module-scoped here)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        yy, xx = np.mgrid[0:24, 0:24]
        base = np.stack([np.sin(xx / (2 + i)), np.cos(yy / (3 + i)), np.sin((xx + yy) / 5)], -1) * 0.4 + 0.5
        img = np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i}.png")


def _first_column(page, table_selector: str) -> list[str]:
    return page.eval_on_selector_all(
        f"{table_selector} tbody tr", "rows => rows.filter(r => !r.hidden).map(r => r.cells[1].textContent.trim())"
    )


def test_report_works_in_headless_chromium(report_page, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "request",
                lambda req: (
                    None
                    if req.url.startswith(("file:", "data:"))
                    else errors.append(f"request outside the file: {req.url}")
                ),
            )
            page.goto(report_page.as_uri())
            page.wait_for_load_state("load")

            # every link of the table of contents lands on an element, scrolled into view
            anchors = page.eval_on_selector_all("nav.toc a", "links => links.map(a => a.getAttribute('href'))")
            assert len(anchors) >= 12 and all(a.startswith("#") for a in anchors)
            for anchor in anchors:
                assert page.locator(f"[id='{anchor[1:]}']").count() == 1, anchor
                page.click(f"nav.toc a[href='{anchor}']")
                top = page.evaluate(f"document.getElementById({anchor[1:]!r}).getBoundingClientRect().top")
                assert -2 <= top < 900, (anchor, top)  # at the top, or as far as the page scrolls

            # clicking a header sorts the rows by that column, clicking again reverses them
            table = "h3#ranking-toy-metric + div table"  # the metric's ranking (one metric: no pooled one)
            before = _first_column(page, table)
            assert len(before) == 2
            header = page.locator(f"{table} thead th", has_text="defence").first
            header.click()
            ascending = _first_column(page, table)
            header.click()
            descending = _first_column(page, table)
            assert ascending == sorted(before) and descending == sorted(before, reverse=True)
            assert header.get_attribute("aria-sort") == "descending"
            rank = page.locator(f"{table} thead th", has_text="rank").first
            rank.click()
            assert _first_column(page, table) == before  # by rank again: the page's order

            # the picker: another defence shows another defended image and its scores, the clean one stays
            def shown():
                return {
                    k: page.eval_on_selector(
                        f"#panel-{k}", "f => [f.querySelector('img').src, f.querySelector('figcaption').textContent]"
                    )
                    for k in ("x", "xa", "dxa")
                }

            first = shown()
            assert all(src.startswith("data:image/") for src, _ in first.values())
            assert "f(x) = " in first["x"][1] and "PSNR" in first["dxa"][1] and "SSIM" in first["xa"][1]
            options = page.eval_on_selector_all("#pick-defence option", "o => o.map(x => x.value)")
            assert options == ["no-defence", "toy-blur"]
            page.select_option("#pick-defence", "toy-blur")
            second = shown()
            assert second["dxa"] != first["dxa"] and second["x"] == first["x"]
            assert "toy-blur" in second["dxa"][1]
            images = page.eval_on_selector_all("#pick-image option", "o => o.map(x => x.value)")
            assert len(images) == 2
            page.select_option("#pick-image", images[1])
            third = shown()
            assert third["x"][0] != second["x"][0] and third["x"][1] != second["x"][1]

            # the filter box hides the rows without its text
            page.fill("#tables .table-box:has(table.summary) input.filter", "toy-blur")
            assert page.eval_on_selector_all("table.summary tbody tr", "rs => rs.filter(r => !r.hidden).length") == 1

            # above the fold: the best defence per attack and the gain-quality figure, drawn
            page.evaluate("window.scrollTo(0, 0)")
            top = page.evaluate("document.getElementById('glance').getBoundingClientRect().top")
            assert top < 900, top
            assert page.locator("#glance table.best tbody tr").count() == 1
            assert page.eval_on_selector("#glance img.tradeoff", "i => i.complete && i.naturalWidth > 300")
            assert page.locator("nav.toc a[href='#ranking-pooled']").count() == 0

            # a wide table scrolls inside its box; the page itself does not scroll sideways
            page.set_viewport_size({"width": 600, "height": 900})  # a narrow window
            box = "#all-scores + div .scroll"
            assert page.eval_on_selector(box, "b => b.scrollWidth > b.clientWidth + 50")
            assert page.eval_on_selector(box, "b => getComputedStyle(b).overflowX") == "auto"
            assert page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth + 1")
            page.set_viewport_size({"width": 1400, "height": 900})

            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
