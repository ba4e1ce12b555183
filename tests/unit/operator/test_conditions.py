"""Status conditions keyed by type: a transition time that changes only with the status, and the
phase's Ready condition with its generation."""

from __future__ import annotations

from zthumb_operator import conditions


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    conds = conditions.set_condition([], "Ready", "False", "Running", "m1", generation=1, now="T1")
    conds = conditions.set_condition(conds, "Ready", "False", "Other", "m2", generation=1, now="T2")
    assert conds == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Other",
            "message": "m2",
            "lastTransitionTime": "T1",
            "observedGeneration": 1,
        }
    ]
    conds = conditions.set_condition(conds, "Ready", "True", "Succeeded", "m3", generation=2, now="T3")
    assert conds[0]["lastTransitionTime"] == "T3"
    assert conds[0]["observedGeneration"] == 2


def test_transition_sets_ready_times_and_generation() -> None:
    first = conditions.transition(
        {}, phase="Downloading", reason="Running", message="m", generation=1, now="T1"
    )
    assert first["startTime"] == "T1"
    assert "completionTime" not in first
    assert conditions.get_condition(first["conditions"], "Ready")["status"] == "False"
    done = conditions.transition(
        first,
        phase="Succeeded",
        reason="Succeeded",
        message="ok",
        generation=1,
        now="T2",
        step_conditions={"Evaluated": ("True", "Completed", "ok")},
    )
    assert done["completionTime"] == "T2"
    assert "startTime" not in done
    assert conditions.condition_true(done["conditions"], "Ready")
    assert conditions.condition_true(done["conditions"], "Evaluated")
    assert done["observedGeneration"] == 1
