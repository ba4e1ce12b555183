"""The report pages' training curves and the index of runs (key numbers, one thumbnail each,
newest first, bounded): zthumb.reports over zthumb.report_store."""

from __future__ import annotations

import json
import os

import pytest
from report_helpers import write_report
from zthumb import report_store

CURVES = ("curves/loss.png", "curves/learning-rate.png", "curves/validation-strip.png")


@pytest.fixture
def reports_dir(tmp_path):
    root = tmp_path / "outputs" / "lora_eval"
    write_report(root, "plain")
    write_report(root, "curvy", gate={"minMeanPixelDifference": 1}, curves=True)
    os.utime(root / "plain" / "summary.json", (1_000, 1_000))
    os.utime(root / "curvy" / "summary.json", (2_000, 2_000))
    return root


def test_the_report_page_shows_the_curves_and_serves_them(make_client, reports_dir):
    client = make_client(reports_dir=reports_dir)
    html = client.get("/reports/curvy/").text
    assert "Training curves" in html and "Validation grids at steps 100, 200, 300" in html
    assert "300 steps logged" in html
    for image in CURVES:
        assert f'src="/reports/curvy/files/{image}"' in html
        answer = client.get(f"/reports/curvy/files/{image}")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        assert answer.content.startswith(b"\x89PNG")
    assert "Training curves" not in client.get("/reports/plain/").text


@pytest.mark.parametrize(("losses", "rising"), [((0.30, 0.20, 0.25), True), ((0.30, 0.25, 0.20), False)])
def test_the_page_shows_the_held_out_loss_and_calls_out_a_rise(make_client, reports_dir, losses, rising):
    from zthumb_contract.eval_report import HoldoutTrend

    summary_file = reports_dir / "curvy" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["curves"]["holdout"] = HoldoutTrend.of([100, 200, 300], list(losses)).model_dump()
    summary_file.write_text(json.dumps(summary))
    # One app: two in one process would load the model on two threads at once, and the
    # loaders' meta-device patch (accelerate's init_empty_weights) is process-wide.
    client = make_client(reports_dir=reports_dir)
    html = client.get("/reports/curvy/").text
    assert 'id="holdout"' in html and "the held-out images' loss in red" in html
    assert f"last {losses[-1]:.5f} at step 300" in html
    assert ('id="holdout-rising"' in html) is rising
    if rising:
        assert "25.0 % above its lowest (step 200)" in html
    assert 'id="holdout"' not in client.get("/reports/plain/").text


def test_the_index_shows_key_numbers_and_a_thumbnail_newest_first(make_client, reports_dir):
    client = make_client(reports_dir=reports_dir)
    html = client.get("/reports/").text
    assert html.index('href="/reports/curvy/"') < html.index('href="/reports/plain/"')
    assert "<td>0.1234</td>" in html and "<td>2.5</td>" in html  # final loss, steps/s
    assert "passed" in html
    # One thumbnail each: the loss curve where there is one, else the first pair.
    assert 'src="/reports/curvy/files/curves/loss.png"' in html
    assert 'src="/reports/plain/files/pairs/p0-s0.png"' in html
    assert html.count('class="thumb"') == 2


def test_a_thumbnail_whose_file_is_gone_falls_back_to_one_that_is_there(reports_dir):
    (reports_dir / "curvy" / "curves" / "loss.png").unlink()
    entries = {entry["run"]: entry for entry in report_store.index_entries(reports_dir)}
    assert entries["curvy"]["thumbnail"] == "curves/validation-strip.png"


def test_the_index_reads_only_the_newest_runs(reports_dir, monkeypatch):
    write_report(reports_dir, "newest")
    os.utime(reports_dir / "newest" / "summary.json", (3_000, 3_000))
    read = []
    original = report_store.read_summary
    monkeypatch.setattr(report_store, "read_summary", lambda d: read.append(d.name) or original(d))
    entries = report_store.index_entries(reports_dir, most=2)
    assert [entry["run"] for entry in entries] == ["newest", "curvy"]
    assert sorted(read) == ["curvy", "newest"]  # the oldest summary is never opened


def test_a_huge_summary_is_not_read(make_client, reports_dir, monkeypatch):
    monkeypatch.setattr(report_store, "MAX_SUMMARY_BYTES", 1_000)
    summary = json.loads((reports_dir / "plain" / "summary.json").read_text())
    summary["padding"] = "x" * 2_000
    (reports_dir / "plain" / "summary.json").write_text(json.dumps(summary))
    client = make_client(reports_dir=reports_dir)
    answer = client.get("/reports/plain/")
    assert answer.status_code == 404 and "larger than 1000 bytes" in answer.text
    assert 'href="/reports/plain/"' not in client.get("/reports/").text


def test_a_run_linked_from_outside_the_reports_is_not_listed(make_client, reports_dir, tmp_path):
    write_report(tmp_path / "elsewhere", "outside")
    (reports_dir / "linked").symlink_to(tmp_path / "elsewhere" / "outside")
    html = make_client(reports_dir=reports_dir).get("/reports/").text
    assert "linked" not in html and 'href="/reports/curvy/"' in html
