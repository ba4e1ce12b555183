"""The report page in a real headless Chromium: log in through the form, see the metrics and every
image, get nothing outside the report; the screenshot is kept as an artifact
(``$ZTHUMB_ARTIFACTS_DIR``, default ``artifacts/`` in the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cdp import Chromium, chromium_binary
from report_helpers import write_report
from server_helpers import serve_on_loopback, server_settings

KEY = "browser-test-key"
ARTIFACTS = Path(os.environ.get("ZTHUMB_ARTIFACTS_DIR") or Path(__file__).resolve().parents[3] / "artifacts")


@pytest.fixture
def chromium(tmp_path):
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("ZTHUMB_ALLOW_NO_BROWSER") == "1":
            pytest.skip("no Chromium (ZTHUMB_ALLOW_NO_BROWSER=1)")
        pytest.fail("Chromium is missing: run hack/tools/ensure-chromium.sh (apt-get install chromium)")
    browser = Chromium(binary, tmp_path / "profile")
    yield browser
    browser.close()


def test_the_report_page_in_a_real_browser(chromium, tiny_model, lora_root, tmp_path):
    from zthumb.app import build_app

    reports_dir = tmp_path / "outputs" / "lora_eval"
    write_report(reports_dir, "z-style", gate={"minMeanPixelDifference": 1}, clip=True)
    settings = server_settings(tiny_model, lora_root, reports_dir=reports_dir, api_key=KEY)
    with serve_on_loopback(build_app(settings)) as url:
        page = chromium.new_page()
        page.navigate(f"{url}/reports/z-style/")
        assert page.evaluate("document.getElementById('login') !== null")  # 401: the login form
        page.submit(
            f"document.getElementById('api_key').value = {KEY!r};"
            "document.getElementById('login').requestSubmit(); true"
        )
        assert page.evaluate("location.pathname") == "/reports/z-style/"
        assert page.evaluate("document.querySelector('h1').textContent") == "LoRA evaluation: z-style"
        assert page.evaluate("document.getElementById('gate').textContent").count("pass") >= 1
        metrics = page.evaluate("document.getElementById('metrics').innerText")
        assert "0.6323" in metrics and "0.2512" in metrics and "(served)" in metrics
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
        # 2 pairs + 1 grid + the scale chart
        assert len(images) == 4 and all(loaded for _, loaded in images), images
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
        screenshot = ARTIFACTS / "report-page.png"
        page.screenshot(screenshot)
        # No script may fetch anything (the page's CSP), and a path out of the report is a 404 page.
        assert "Failed to fetch" in page.evaluate("fetch('/reports/').then(() => 'fetched', e => String(e))")
        page.navigate(f"{url}/reports/z-style/files/%2e%2e/%2e%2e/secret.png")
        assert page.evaluate("document.querySelector('h1').textContent") == "404"
        page.close()
    print(f"screenshot: {screenshot}")
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000


def test_the_curves_and_the_index_thumbnails_load_in_a_real_browser(
    chromium, tiny_model, lora_root, tmp_path
):
    """The training curves on the report page and one thumbnail per run on the index are images
    the browser decoded (naturalWidth > 0), not broken links; both pages kept as screenshots."""
    from zthumb.app import build_app

    reports_dir = tmp_path / "outputs" / "lora_eval"
    write_report(reports_dir, "plain")
    write_report(reports_dir, "z-curves", gate={"minMeanPixelDifference": 1}, curves=True)
    settings = server_settings(tiny_model, lora_root, reports_dir=reports_dir, api_key=KEY)
    loaded = (
        "(id => { const i = document.getElementById(id);"
        " return i !== null && i.complete && i.naturalWidth > 0 })"
    )
    with serve_on_loopback(build_app(settings)) as url:
        page = chromium.new_page()
        page.navigate(f"{url}/reports/z-curves/")
        page.submit(
            f"document.getElementById('api_key').value = {KEY!r};"
            "document.getElementById('login').requestSubmit(); true"
        )
        assert page.evaluate("location.pathname") == "/reports/z-curves/"
        for image in ("loss-curve", "learning-rate-curve", "validation-strip", "scale-chart"):
            assert page.evaluate(f"{loaded}({image!r})"), image
        # The sweep: its recommendation and one table per prompt group, beside the chart.
        assert "Recommended scale: 0.8" in page.evaluate(
            "document.getElementById('recommended-scale').innerText"
        )
        # The helper's images differ by 160 in one channel of three.
        assert "53.33" in page.evaluate("document.getElementById('sweep-in_distribution').innerText")
        widths = page.evaluate(
            "['loss-curve', 'validation-strip', 'scale-chart']"
            ".map(id => document.getElementById(id).naturalWidth)"
        )
        # The fixed-size curve; three grids side by side; the chart as wide as a curve.
        assert widths[0] == 800 and widths[1] > 3 * 200 and widths[2] == 800
        report_shot = ARTIFACTS / "report-curves.png"
        page.screenshot(report_shot)
        page.navigate(f"{url}/reports/")
        thumbnails = page.evaluate(
            "Array.from(document.querySelectorAll('img.thumb'))"
            ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
        assert [src for src, _ in thumbnails] == [
            "/reports/z-curves/files/curves/loss.png",
            "/reports/plain/files/pairs/p0-s0.png",
        ]
        assert all(ok for _, ok in thumbnails), thumbnails
        assert "0.1234" in page.evaluate("document.getElementById('runs').innerText")  # final loss
        index_shot = ARTIFACTS / "report-index.png"
        page.screenshot(index_shot)
        page.close()
    print(f"screenshots: {report_shot} {index_shot}")
    for shot in (report_shot, index_shot):
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
