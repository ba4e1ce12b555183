"""spec.eval.gate in the operator: a failed gate rolls the Deployment back and fails the run."""

from __future__ import annotations

from typing import Any

from reconcile_harness import Harness
from zthumb_operator import conditions, deployments

GATED = {"dataset": {"triggerWord": "z"}, "eval": {"gate": {"minClipIGain": 0.02, "maxClipTDrop": 0.05}}}


def to_evaluated(h: Harness) -> None:
    """Run the harness's run through every stage up to a completed eval Job."""
    for step in ("fetch-model", "prepare-dataset", "train"):
        h.reconcile()
        h.complete(step)
    h.reconcile()  # deploy: patch
    h.rollout_done()
    h.reconcile()  # deploy done, eval Job created
    h.complete("eval")


def served_env(h: Harness) -> dict[str, str]:
    d = h.api.deployments[("ml", "zthumb")]
    return {e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}


def gated(summary: dict[str, Any]) -> Harness:
    return Harness(GATED, simulated_eval_summary=summary)


def test_a_passing_gate_keeps_the_adapter_and_records_the_verdict() -> None:
    h = gated({"clipIGain": 0.031, "clipTDrop": 0.004, "meanPixelDifference": 12.0})
    to_evaluated(h)
    h.reconcile()
    st = h.status()
    assert st["phase"] == "Succeeded"
    assert st["evalGate"]["passed"] is True
    assert [c["metric"] for c in st["evalGate"]["checks"]] == ["clipIGain", "clipTDrop"]
    assert served_env(h)["Z_LORA_PATH"] == "/data/models/lora/z-style"
    assert "gate passed" in conditions.get_condition(st["conditions"], "Evaluated")["message"]


def test_a_failed_gate_restores_the_previous_adapter_and_fails_with_the_numbers() -> None:
    h = gated({"clipIGain": 0.001, "clipTDrop": 0.004})
    to_evaluated(h)
    h.reconcile()
    st = h.status()
    assert st["phase"] == "Failed"
    assert st["reason"] == "EvalGateFailed"
    assert "clipIGain 0.001 < min 0.02" in st["message"]
    assert "restored the previous adapter (Z_LORA_PATH=/data/models/lora/old)" in st["message"]
    assert st["reportPath"] in st["message"]
    evaluated = conditions.get_condition(st["conditions"], "Evaluated")
    assert (evaluated["status"], evaluated["reason"]) == ("False", "EvalGateFailed")
    assert st["evalGate"]["passed"] is False
    assert st["evalGate"]["checks"][0] == {
        "metric": "clipIGain", "kind": "min", "threshold": 0.02, "value": 0.001, "passed": False
    }  # fmt: skip
    env = served_env(h)
    assert env["Z_LORA_PATH"] == "/data/models/lora/old"
    assert "Z_LORA_SCALE" not in env  # it was not set before the run: removed again
    assert st["deploy"]["rolledBack"] is True
    assert ("Warning", "EvalGateFailed") in {(t, r) for t, r, _ in h.api.events}


def test_a_dino_gain_or_an_aesthetic_drop_out_of_bounds_fails_the_run_from_status_eval_summary() -> None:
    """The operator judges the numbers it copied into status.evalSummary: dinoGain and aestheticDrop."""
    spec = {
        "dataset": {"triggerWord": "z"},
        "eval": {
            "dino": {"enabled": True},
            "aesthetic": {"enabled": True, "url": "https://example.com/h.safetensors", "sha256": "ab" * 32},
            "gate": {"minDinoGain": 0.05, "maxAestheticDrop": 0.5},
        },
    }
    h = Harness(spec, simulated_eval_summary={"dinoGain": 0.01, "aestheticDrop": 0.7})
    to_evaluated(h)
    h.reconcile()
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "EvalGateFailed")
    assert st["evalSummary"]["dinoGain"] == 0.01 and st["evalSummary"]["aestheticDrop"] == 0.7
    assert "dinoGain 0.01 < min 0.05; aestheticDrop 0.7 > max 0.5" in st["message"]
    assert served_env(h)["Z_LORA_PATH"] == "/data/models/lora/old"


def test_a_metric_the_evaluation_did_not_measure_fails_the_gate() -> None:
    h = gated({"meanPixelDifference": 9.0})  # e.g. an eval without CLIP
    to_evaluated(h)
    h.reconcile()
    assert h.status()["reason"] == "EvalGateFailed"
    assert "clipIGain was not measured" in h.status()["message"]


def test_an_adapter_another_run_rolled_out_meanwhile_is_left_in_place() -> None:
    h = gated({"clipIGain": -0.1, "clipTDrop": 0.0})
    to_evaluated(h)
    d = h.api.deployments[("ml", "zthumb")]
    d["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "Z_LORA_PATH", "value": "/data/models/lora/newer"}
    ]
    h.reconcile()
    st = h.status()
    assert st["reason"] == "EvalGateFailed"
    assert "already serves another adapter (Z_LORA_PATH=/data/models/lora/newer), left as is" in st["message"]
    assert served_env(h)["Z_LORA_PATH"] == "/data/models/lora/newer"


def test_the_rollback_waits_while_another_run_holds_the_rollout_lock() -> None:
    h = gated({"clipIGain": -0.1, "clipTDrop": 0.0})
    to_evaluated(h)
    other = dict(h.api.runs[("ml", "z-style")])
    other = {**other, "metadata": {**other["metadata"], "name": "other", "uid": "uid-other"}, "status": {}}
    h.add_run(other)
    d = h.api.deployments[("ml", "zthumb")]
    d["metadata"]["annotations"][deployments.ROLLOUT_OWNER_ANNOTATION] = "other"
    assert h.reconcile() is not None  # looks again later
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Evaluating", "WaitingForRollout")
    assert served_env(h)["Z_LORA_PATH"] == "/data/models/lora/z-style"
    d["metadata"]["annotations"].pop(deployments.ROLLOUT_OWNER_ANNOTATION)  # the other run is done
    h.reconcile()
    assert h.status()["reason"] == "EvalGateFailed"
    assert served_env(h)["Z_LORA_PATH"] == "/data/models/lora/old"


def test_no_gate_behaves_as_before() -> None:
    h = Harness(simulated_eval_summary={"clipIGain": -1.0})
    to_evaluated(h)
    h.reconcile()
    assert h.status()["phase"] == "Succeeded"
    assert "evalGate" not in h.status()
