"""The reported blocks (zthumb_contract.results, eval_report): round trips, both key spellings, and
each bad value dropped on its own."""

from __future__ import annotations

import json
import math

import pytest
from zthumb_contract.eval_report import EvalReport, LeakageBlock, LeakagePrompt
from zthumb_contract.results import EvalSummary, TrainResults

SHA = "ab" * 32


def test_eval_summary_round_trips_through_its_status_shape() -> None:
    summary = EvalSummary(requests=8, mean_pixel_difference=12.5, clip_i_gain=0.03, leakage=0.08,
                          served_scale=0.8, adapter_sha256=SHA)  # fmt: skip
    status = summary.status()
    assert status == {"requests": 8, "meanPixelDifference": 12.5, "clipIGain": 0.03, "leakage": 0.08,
                      "servedScale": 0.8, "adapterSha256": SHA}  # fmt: skip
    assert EvalSummary.from_report(json.loads(json.dumps(status))) == summary
    assert EvalSummary.from_report({"clip_i_gain": 0.03}) == EvalSummary(clip_i_gain=0.03)  # snake too


@pytest.mark.parametrize(
    "bad",
    [
        {"clipIGain": math.nan},
        {"clip_i_gain": math.inf},  # spelled by name
        {"leakage": 2.5},  # out of 0..2
        {"leakage": -0.1},
        {"requests": True},  # a bool is not a count
        {"meanPixelDifference": "12"},
        {"adapterSha256": "not-a-digest"},
    ],
)
def test_each_bad_value_is_dropped_on_its_own(bad: dict[str, object]) -> None:
    good = {"requests": 4, "clipTDrop": 0.01}
    summary = EvalSummary.from_report({**good, "someNewerNumber": 3, **bad})
    assert summary is not None
    assert summary.status() == {key: value for key, value in good.items() if key not in bad}


def test_what_is_not_an_object_is_no_summary() -> None:
    assert EvalSummary.from_report([1, 2]) is None and EvalSummary.from_report(None) is None
    assert TrainResults.from_report("x") is None


def test_train_results_keep_the_good_values() -> None:
    results = TrainResults.from_report({"stepsPerSecond": 2.5, "finalLoss": math.nan, "device": "cpu"})
    assert results is not None and results.status() == {"stepsPerSecond": 2.5, "device": "cpu"}


def _report() -> EvalReport:
    leakage = LeakageBlock(scale=0.8, seeds=[0, 1], leakage=0.1, prompts=[
        LeakagePrompt(prompt="a cat", similarity=0.9, leakage=0.1, images=["leakage/l0-s0.png"])
    ])  # fmt: skip
    return EvalReport.model_validate({
        "run_name": "style", "scales": [0.0, 0.8], "served_scale": 0.8, "requests": 4,
        "mean_pixel_difference": 20.0, "min_pixel_difference": 10.0, "mean_latency_s": 0.5, "seconds": 3.0,
        "adapter": {"path": "style", "sha256": SHA},
        "training": {"stepsPerSecond": 2.0, "memoryKind": "ProcessMaxRSS"},
        "clip": {"model": {"name": "c"}, "reference_scale": 0.0, "training_images": 4,
                 "by_scale": {"0": {"clip_t": 0.2, "clip_i": 0.5}, "0.8": {"clip_t": 0.19, "clip_i": 0.55}},
                 "clip_i_gain": 0.05, "clip_t_drop": 0.01},
        "leakage": leakage,
        "pairs": [{"prompt": "zt", "seed": 0, "image": "pairs/p0-s0.png",
                   "mean_pixel_difference": {"0.8": 20.0}, "latency_s": {"0": 0.5, "0.8": 0.5}}],
    })  # fmt: skip


def test_summary_json_round_trips_with_the_keys_older_versions_wrote() -> None:
    report = _report()
    on_disk = json.loads(report.to_json())
    # snake_case on disk, as before the model; the train step's block keeps its camelCase.
    assert {"run_name", "mean_pixel_difference", "mean_latency_s", "served_scale", "pairs"} <= set(on_disk)
    assert on_disk["clip"]["clip_i_gain"] == 0.05 and on_disk["training"]["stepsPerSecond"] == 2.0
    assert EvalReport.from_report(on_disk) == report
    assert EvalReport.from_report(report.model_dump(by_alias=True)) == report  # camelCase read too


def test_the_compact_summary_comes_from_the_report() -> None:
    assert _report().summary().status() == {
        "requests": 4, "meanPixelDifference": 20.0, "minPixelDifference": 10.0, "meanLatencySeconds": 0.5,
        "seconds": 3.0, "servedScale": 0.8, "clipIGain": 0.05, "clipTDrop": 0.01, "leakage": 0.1,
        "adapterSha256": SHA,
    }  # fmt: skip
    assert EvalReport().summary().status() == {"requests": 0}


def test_a_bad_value_in_summary_json_costs_only_its_block() -> None:
    on_disk = json.loads(_report().to_json())
    on_disk["clip"]["clip_i_gain"] = math.nan
    on_disk["mean_latency_s"] = "slow"
    report = EvalReport.from_report(on_disk)
    assert report is not None
    assert report.clip is None and report.mean_latency_s is None
    assert report.leakage is not None and report.leakage.leakage == 0.1 and report.requests == 4
    assert "clipIGain" not in report.summary().status()


def test_the_dino_and_aesthetic_numbers_reach_the_compact_summary() -> None:
    on_disk = json.loads(_report().to_json())
    on_disk["dino"] = {"by_scale": {"0": {"dino": 0.6}, "0.8": {"dino": 0.7}}, "dino_gain": 0.1}
    on_disk["aesthetic"] = {
        "by_scale": {"0": {"aesthetic": 6.0}, "0.8": {"aesthetic": 5.5}},
        "aesthetic_drop": 0.5,
    }
    status = EvalReport.from_report(on_disk).summary().status()
    assert (status["dinoGain"], status["aestheticDrop"]) == (0.1, 0.5)


def test_the_report_file_is_indented_json_for_people_reading_the_volume() -> None:
    text = _report().to_json()
    assert text.startswith('{\n  "') and text.endswith("}\n")
