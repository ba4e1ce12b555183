"""The prompt groups and the scale sweep (eval/prompt_groups.py, eval/scale_sweep.py): both groups
rendered with the same seeds and scales and reported apart, every metric per group and scale, the
chart with one panel per metric, the recommended scale; against the fake server of test_evaluate
(its image depends on scale and seed only: shade = 100 x scale + seed) and the tiny CLIP."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from test_evaluate import _clip_config, _fake_server
from zthumb_contract.scale_sweep import (
    AESTHETIC,
    CLIP_I,
    CLIP_T,
    DINO,
    IN_DISTRIBUTION,
    LEAKAGE,
    METRIC_TITLES,
    OUT_OF_DISTRIBUTION,
    PIXEL_DIFFERENCE,
    WITHOUT_TRIGGER,
    recommend_scale,
)
from zthumb_trainer.eval import curves
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.run import run_eval
from zthumb_trainer.eval.scale_sweep import SCALES_IMAGE, draw_scale_chart, sweep_groups
from zthumb_trainer.local.http_serve import StaticServer


def test_both_groups_are_rendered_with_the_same_seeds_and_reported_apart(
    tmp_path,
    monkeypatch,
    clip_files,
):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    (tmp_path / "termination-log").write_text("")
    seen: list = []
    with (
        StaticServer(clip_files[0]) as clip_server,
        StaticServer(tmp_path, handler=_fake_server(requests=seen)) as server,
    ):
        config = _clip_config(
            tmp_path, clip_server, clip_files, trigger_word="zt", prompts=["a photo of {trigger}"],
            out_of_distribution_prompts=["{trigger} on the moon"], leakage_prompts=["a city street"],
            scales=[0.0, 0.4, 0.8], served_scale=0.8,
        )  # fmt: skip
        report = run_eval(EvalConfig(server_url=server.url, **config))
    asked = [(r["prompt"], r["seed"], r["lora_scale"]) for r in seen]
    scales = (0.0, 0.4, 0.8)
    assert asked == [
        *[("a photo of zt", seed, scale) for seed in (0, 1) for scale in scales],
        *[("zt on the moon", seed, scale) for seed in (0, 1) for scale in scales],
        # Leakage now at every scale, not only the served one.
        *[("a city street", seed, scale) for seed in (0, 1) for scale in scales],
    ]
    assert [(p.group, p.prompt, p.image) for p in report.pairs] == [
        (IN_DISTRIBUTION, "a photo of zt", "pairs/p0-s0.png"),
        (IN_DISTRIBUTION, "a photo of zt", "pairs/p0-s1.png"),
        (OUT_OF_DISTRIBUTION, "zt on the moon", "pairs/ood-p0-s0.png"),
        (OUT_OF_DISTRIBUTION, "zt on the moon", "pairs/ood-p0-s1.png"),
    ]
    output = tmp_path / "eval"
    assert (output / "pairs" / "ood-p0-s1.png").exists()
    sweep = report.sweep
    assert sweep is not None and sweep.scales == [0.0, 0.4, 0.8]
    assert list(sweep.groups) == [IN_DISTRIBUTION, OUT_OF_DISTRIBUTION, WITHOUT_TRIGGER]
    for group in (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION):
        by_metric = sweep.groups[group]
        assert list(by_metric) == [PIXEL_DIFFERENCE, CLIP_T, CLIP_I]
        # The red channel moves by 100 x the scale, the others not: a third of it on average.
        assert by_metric[PIXEL_DIFFERENCE] == pytest.approx(
            {"0": 0.0, "0.4": 40 / 3, "0.8": 80 / 3}, abs=1e-3
        )
    # Same images, different prompts: CLIP-I agrees between the groups, CLIP-T does not.
    assert sweep.groups[IN_DISTRIBUTION][CLIP_I] == sweep.groups[OUT_OF_DISTRIBUTION][CLIP_I]
    assert sweep.groups[IN_DISTRIBUTION][CLIP_T] != sweep.groups[OUT_OF_DISTRIBUTION][CLIP_T]
    # The CLIP block (what the gate judges) is the in-distribution group's.
    assert report.clip is not None
    assert report.clip.by_scale["0.8"]["clip_t"] == sweep.groups[IN_DISTRIBUTION][CLIP_T]["0.8"]
    leakage = sweep.groups[WITHOUT_TRIGGER][LEAKAGE]
    assert set(leakage) == {"0", "0.4", "0.8"} and leakage["0"] == 0.0
    assert report.leakage is not None and leakage["0.8"] == report.leakage.leakage
    # The gate's pixel difference stays the in-distribution prompts'.
    assert report.mean_pixel_difference == pytest.approx((40 / 3 + 80 / 3) / 2, abs=1e-3)
    assert sweep.chart == SCALES_IMAGE and (output / SCALES_IMAGE).exists()
    on_disk = json.loads((output / "summary.json").read_text())
    assert on_disk["sweep"]["groups"] == sweep.groups and on_disk["sweep"]["rule"] == sweep.rule
    assert (
        json.loads((tmp_path / "termination-log").read_text()).get("recommendedScale")
        == sweep.recommended_scale
    )
    markdown = (output / "report.md").read_text()
    assert (
        "## Metrics by LoRA scale" in markdown
        and f"![every metric against the LoRA scale]({SCALES_IMAGE})" in markdown
    )
    assert "### In-distribution prompts" in markdown and "### Out-of-distribution prompts" in markdown
    assert "### Prompts without the trigger" in markdown
    # The pixel difference of scale 0.4 (4 significant digits); the row marks the recommended scale.
    assert re.search(r"\| 0\.4( \(recommended\))? \| 13\.33 \|", markdown)
    assert sweep.recommended_scale == recommend_scale(sweep.groups, sweep.scales).scale
    assert "## zt on the moon — seed 0 (out-of-distribution prompts)" in markdown
    assert "Recommended scale" in markdown


def test_an_empty_out_of_distribution_list_renders_no_such_group(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    seen: list = []
    with StaticServer(tmp_path, handler=_fake_server(requests=seen)) as server:
        report = run_eval(
            EvalConfig(server_url=server.url, output=tmp_path / "eval", run_name="s", lora_path="s",
                       prompts=["a tree"], out_of_distribution_prompts=[], seeds=[0], scales=[0.0, 0.8],
                       steps=2)
        )  # fmt: skip
    assert len(seen) == 2 and report.sweep is not None and list(report.sweep.groups) == [IN_DISTRIBUTION]
    # Without CLIP, the pixel rule: 80 / 3 reaches the default 2.
    assert report.sweep.recommended_scale == 0.8 and report.summary().recommended_scale == 0.8


def _samples(metrics: dict[str, float]) -> list[Sample]:
    image = Image.new("RGB", (8, 8))
    return [
        Sample(
            0, "p", 0, scale, image, 0.1, {}, group=group, scores={m: v * scale for m, v in metrics.items()}
        )
        for group in (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION)
        for scale in (0.0, 0.5, 1.0)
    ]


def test_dino_and_the_aesthetic_score_get_titled_panels_after_clip(tmp_path):
    """The eval's DINO and aesthetic values, per sample, join the sweep of both prompt groups."""
    metrics = {AESTHETIC: 5.0, DINO: 0.5, PIXEL_DIFFERENCE: 10.0, CLIP_T: 0.3, CLIP_I: 0.6}
    groups = sweep_groups(_samples(metrics), [0.0, 0.5, 1.0])
    for group in (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION):
        assert list(groups[group]) == [PIXEL_DIFFERENCE, CLIP_T, CLIP_I, DINO, AESTHETIC]
        assert groups[group][AESTHETIC] == {"0": 0.0, "0.5": 2.5, "1": 5.0}
    panels = draw_scale_chart(groups, None, tmp_path / "scales.png")
    assert panels[3:] == [METRIC_TITLES[DINO], METRIC_TITLES[AESTHETIC]]


def test_a_metric_added_later_gets_its_column_and_its_panel_without_a_change_here(tmp_path):
    """The sweep and the chart iterate what the samples carry: a new score key is one more panel."""
    known = {PIXEL_DIFFERENCE: 10.0, CLIP_T: 0.3, CLIP_I: 0.6}
    groups = sweep_groups(_samples(known), [0.0, 0.5, 1.0], leakage={0.0: 0.0, 0.5: 0.02, 1.0: 0.05})
    assert draw_scale_chart(groups, 0.5, tmp_path / "four.png") == [
        METRIC_TITLES[PIXEL_DIFFERENCE], METRIC_TITLES[CLIP_T], METRIC_TITLES[CLIP_I], METRIC_TITLES[LEAKAGE]
    ]  # fmt: skip
    with Image.open(tmp_path / "four.png") as image:
        assert image.size == (800, 2 * 300)  # 2 x 2 panels, each the size of a training curve
    groups = sweep_groups(_samples(known | {"sharpness": 0.7}), [0.0, 0.5, 1.0], leakage=None)
    assert list(groups[IN_DISTRIBUTION]) == [PIXEL_DIFFERENCE, CLIP_T, CLIP_I, "sharpness"]
    assert groups[OUT_OF_DISTRIBUTION]["sharpness"] == {"0": 0.0, "0.5": 0.35, "1": 0.7}
    panels = draw_scale_chart(groups, None, tmp_path / "sharp.png")
    assert panels[3] == "sharpness" and len(panels) == 4  # no leakage; sharpness instead, titled by its key
    one = draw_scale_chart({IN_DISTRIBUTION: {CLIP_T: {"0": 0.3, "1": 0.2}}}, None, tmp_path / "one.png")
    assert one == [METRIC_TITLES[CLIP_T]]
    with Image.open(tmp_path / "one.png") as image:
        assert image.size == (800, 300)


def test_one_scale_draws_no_chart(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    with StaticServer(tmp_path, handler=_fake_server()) as server:
        report = run_eval(
            EvalConfig(server_url=server.url, output=tmp_path / "eval", run_name="s", lora_path="s",
                       prompts=["a tree"], seeds=[0], scales=[0.0], steps=2)
        )  # fmt: skip
    assert report.sweep is not None and report.sweep.chart is None and report.sweep.recommended_scale is None
    assert not (tmp_path / "eval" / curves.CURVES_DIR).exists()
