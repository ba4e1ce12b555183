"""DINO and the aesthetic score through the eval step (run_eval against a fake server): fetched and
verified like CLIP, per scale in summary.json, in report.md, in the termination message and judged
by the gate; a bad model spec fails before any image is asked for."""

from __future__ import annotations

import json

import pytest
from test_evaluate import _clip_config, _fake_server
from zthumb_contract.scale_sweep import AESTHETIC, DINO, IN_DISTRIBUTION, OUT_OF_DISTRIBUTION
from zthumb_trainer.eval.aesthetic import save_random_head
from zthumb_trainer.eval.config import EvalConfig
from zthumb_trainer.eval.run import EvalError, run_eval
from zthumb_trainer.fetch.verified import sha256_of
from zthumb_trainer.local.http_serve import StaticServer
from zthumb_trainer.tiny.tiny_clip import PROJECTION_DIM
from zthumb_trainer.tiny.tiny_dino import build_tiny_dino


@pytest.fixture(scope="module")
def scorer_files(clip_files):
    """The tiny DINOv2 and a random aesthetic head, beside the tiny CLIP (one static server)."""
    root = clip_files[0]
    dino = build_tiny_dino(root)
    head = save_random_head(root / "head.safetensors", PROJECTION_DIM)
    return dino, sha256_of(dino.weights), head, sha256_of(head)


def _config(tmp_path, server_url, clip_files, scorer_files, **overrides):
    dino, dino_sha, head, head_sha = scorer_files
    dino_spec = {"enabled": True, "url": f"{server_url}/{dino.weights.name}", "sha256": dino_sha,
                 "configUrl": f"{server_url}/{dino.config_dir.name}/", "maxTrainingImages": 3}  # fmt: skip
    aesthetic = {"enabled": True, "url": f"{server_url}/{head.name}", "sha256": head_sha}
    models = tmp_path / "models"
    return {
        "dino": dino_spec, "aesthetic": aesthetic, "dino_model": models / "dino.safetensors",
        "dino_config": models / "dino-config", "aesthetic_model": models / "aesthetic.safetensors",
    } | overrides  # fmt: skip


def test_dino_and_aesthetic_reach_the_summary_the_report_the_message_and_the_gate(
    tmp_path,
    monkeypatch,
    clip_files,
    scorer_files,
):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    (tmp_path / "termination-log").write_text("")
    with StaticServer(clip_files[0]) as files, StaticServer(tmp_path, handler=_fake_server()) as server:
        config = _clip_config(tmp_path, files, clip_files, gate={"minDinoGain": 2.0, "maxAestheticDrop": 10})
        config |= _config(tmp_path, files.url, clip_files, scorer_files)
        config["out_of_distribution_prompts"] = ["a watercolor painting of {trigger}"]
        summary = run_eval(EvalConfig(server_url=server.url, **config))
    dino, aesthetic = summary.dino, summary.aesthetic
    # Each image's DINO and aesthetic score join the sweep of both prompt groups, scale by scale.
    assert summary.sweep is not None
    for group in (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION):
        assert (
            set(summary.sweep.groups[group][DINO])
            == set(summary.sweep.groups[group][AESTHETIC])
            == {"0", "0.8"}
        )
    in_distribution = {scale: values["dino"] for scale, values in dino.by_scale.items()}
    # The sweep averages the rounded per-image values, the block the exact ones.
    assert summary.sweep.groups[IN_DISTRIBUTION][DINO] == pytest.approx(in_distribution, abs=2e-4)
    assert dino is not None and aesthetic is not None
    assert set(dino.by_scale) == set(aesthetic.by_scale) == {"0", "0.8"} and dino.training_images == 3
    assert dino.dino_gain == pytest.approx(
        dino.by_scale["0.8"]["dino"] - dino.by_scale["0"]["dino"], abs=2e-4
    )
    drop = aesthetic.by_scale["0"]["aesthetic"] - aesthetic.by_scale["0.8"]["aesthetic"]
    assert aesthetic.aesthetic_drop == pytest.approx(drop, abs=2e-4)
    assert set(summary.pairs[0].dino or {}) == set(summary.pairs[0].aesthetic or {}) == {"0", "0.8"}
    compact = json.loads((tmp_path / "termination-log").read_text())
    assert compact["dinoGain"] == dino.dino_gain and compact["aestheticDrop"] == aesthetic.aesthetic_drop
    # The gate: a DINO gain of 2 is out of reach (cosines), an aesthetic drop of 10 is not.
    assert summary.gate is not None and summary.gate["passed"] is False
    assert [check["metric"] for check in summary.gate["checks"]] == ["dinoGain", "aestheticDrop"]
    assert [check["passed"] for check in summary.gate["checks"]] == [False, True]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Subject fidelity and aesthetics" in report
    assert (
        f"| 0.8 | {dino.by_scale['0.8']['dino']:.4f} | {aesthetic.by_scale['0.8']['aesthetic']:.4f} |"
        in report
    )
    assert (tmp_path / "models" / "dino.safetensors.verified").exists()


def test_a_dino_whose_sha256_differs_fails_before_any_render(tmp_path, clip_files, scorer_files):
    seen: list = []
    with (
        StaticServer(clip_files[0]) as files,
        StaticServer(tmp_path, handler=_fake_server(requests=seen)) as server,
    ):
        config = _clip_config(tmp_path, files, clip_files)
        config |= _config(tmp_path, files.url, clip_files, scorer_files)
        config["dino"] = {**config["dino"], "sha256": "0" * 64}
        with pytest.raises(EvalError, match=r"(?s)sha256 mismatch.*spec\.eval\.dino\.sha256"):
            run_eval(EvalConfig(server_url=server.url, **config))
    assert seen == []


def test_an_aesthetic_head_for_another_clip_fails_naming_the_field(tmp_path, clip_files, scorer_files):
    wide = save_random_head(tmp_path / "wide.safetensors", 768)
    with StaticServer(tmp_path) as heads, StaticServer(clip_files[0]) as files:
        config = _clip_config(tmp_path, files, clip_files)
        config |= _config(tmp_path, files.url, clip_files, scorer_files)
        config["aesthetic"] = {
            "enabled": True,
            "url": f"{heads.url}/wide.safetensors",
            "sha256": sha256_of(wide),
        }
        with pytest.raises(EvalError, match=r"spec\.eval\.aesthetic: the head takes 768-wide embeddings"):
            run_eval(EvalConfig(server_url="http://127.0.0.1:9", **config))
