"""Leakage (eval/leakage.py): prompts without the trigger at scale 0 and at the served scale, scored by
the tiny CLIP, against the fake server of test_evaluate (its image depends on scale and seed only)."""

from __future__ import annotations

import json
import math

import pytest
from test_evaluate import _clip_config, _fake_server
from zthumb_trainer.eval.config import EvalConfig
from zthumb_trainer.eval.run import run_eval
from zthumb_trainer.local.http_serve import StaticServer

PROMPTS = ["a city street", "a bowl of fruit"]


def _run(tmp_path, monkeypatch, clip_files, served_scale, seen=None, **overrides):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    (tmp_path / "termination-log").write_text("")
    with (
        StaticServer(clip_files[0]) as clip_server,
        StaticServer(tmp_path, handler=_fake_server(requests=seen)) as server,
    ):
        options = {"leakage_prompts": PROMPTS, "trigger_word": "zt", "served_scale": served_scale}
        config = _clip_config(tmp_path, clip_server, clip_files, **(options | overrides))
        return run_eval(EvalConfig(server_url=server.url, **config))


def test_an_untouched_image_has_no_leakage(tmp_path, monkeypatch, clip_files):
    report = _run(tmp_path, monkeypatch, clip_files, served_scale=0.0)
    assert report.leakage is not None
    assert report.leakage.leakage == pytest.approx(0.0, abs=1e-4)
    assert [p.similarity for p in report.leakage.prompts] == pytest.approx([1.0, 1.0], abs=1e-4)


def test_leakage_renders_prompts_as_written_and_reaches_every_output(tmp_path, monkeypatch, clip_files):
    seen: list = []
    report = _run(tmp_path, monkeypatch, clip_files, served_scale=0.8, seen=seen,
                  gate={"maxLeakage": 0.0})  # fmt: skip
    leakage = report.leakage
    assert leakage is not None and leakage.scale == 0.8 and leakage.seeds == [0, 1]
    assert math.isfinite(leakage.leakage) and 0 < leakage.leakage <= 2  # the fake's shade moved
    per_prompt = [p.leakage for p in leakage.prompts]
    assert leakage.leakage == pytest.approx(sum(per_prompt) / len(per_prompt), abs=2e-4)
    assert [p.prompt for p in leakage.prompts] == PROMPTS
    # Sent as written (no trigger word put in front), at scale 0 and the served scale, every seed;
    # after the compared prompts' requests, which `requests` still counts alone.
    unasked = [(r["prompt"], r["seed"], r["lora_scale"]) for r in seen if r["prompt"] in PROMPTS]
    assert unasked == [(prompt, seed, scale) for prompt in PROMPTS for seed in (0, 1) for scale in (0.0, 0.8)]
    assert report.requests == len(seen) - len(unasked) == 4
    output = tmp_path / "eval"
    assert (output / "leakage" / "l1-s1.png").exists()
    on_disk = json.loads((output / "summary.json").read_text())
    assert on_disk["leakage"]["leakage"] == leakage.leakage
    assert json.loads((tmp_path / "termination-log").read_text())["leakage"] == leakage.leakage
    # The gate's rule: any leakage fails maxLeakage 0.
    assert report.gate is not None and report.gate["passed"] is False
    assert report.gate["checks"] == [{"metric": "leakage", "kind": "max", "threshold": 0.0,
                                      "value": leakage.leakage, "passed": False}]  # fmt: skip
    markdown = (output / "report.md").read_text()
    assert "## Leakage (prompts without the trigger)" in markdown
    assert (
        f"| a city street | {leakage.prompts[0].similarity:.4f} | {leakage.prompts[0].leakage:.4f} |"
        in markdown
    )
    assert "![a bowl of fruit](leakage/l1-s0.png)" in markdown
    assert "| leakage | max 0 |" in markdown


def test_no_leakage_prompts_no_renders(tmp_path, monkeypatch, clip_files):
    seen: list = []
    report = _run(tmp_path, monkeypatch, clip_files, served_scale=0.8, seen=seen, **{"leakage_prompts": []})
    assert report.leakage is None and len(seen) == report.requests == 4
    assert json.loads((tmp_path / "termination-log").read_text()).get("leakage") is None
    assert "Leakage" not in (tmp_path / "eval" / "report.md").read_text()
