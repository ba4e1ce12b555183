"""Status conditions (a map list keyed by ``type``) and the status patch of a phase transition.
Pure: plain values in, dicts out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zthumb_contract.stages import SUCCEEDED, TERMINAL_PHASES

READY = "Ready"


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Conditions with ``ctype`` set; lastTransitionTime moves only when the status changes."""

    def condition(last_transition: str) -> dict[str, Any]:
        new: dict[str, Any] = {"type": ctype, "status": status, "reason": reason, "message": message}
        new["lastTransitionTime"] = last_transition
        if generation is not None:
            new["observedGeneration"] = generation
        return new

    out = [dict(cond) for cond in conditions if cond.get("type") != ctype]
    current = get_condition(conditions, ctype) or {}
    kept = current.get("lastTransitionTime") if current.get("status") == status else None
    position = next((i for i, c in enumerate(conditions) if c.get("type") == ctype), len(conditions))
    out.insert(position, condition(kept or now))
    return out


def get_condition(conditions: Sequence[Mapping[str, Any]] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == ctype:
            return cond
    return None


def condition_true(conditions: Sequence[Mapping[str, Any]] | None, ctype: str) -> bool:
    cond = get_condition(conditions, ctype)
    return bool(cond and cond.get("status") == "True")


def transition(
    status: Mapping[str, Any],
    *,
    phase: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
    step_conditions: Mapping[str, tuple[str, str, str]] | None = None,
) -> dict[str, Any]:
    """The status fields to write for a move to ``phase`` (a patch, not the whole status).

    ``Ready`` follows the phase: True on Succeeded, False otherwise (reason = the
    phase's reason). ``step_conditions`` maps condition type to (status, reason, message).
    """
    conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []]
    for ctype, (cstatus, creason, cmessage) in (step_conditions or {}).items():
        conditions = set_condition(
            conditions, ctype, cstatus, creason, cmessage, generation=generation, now=now
        )
    ready = "True" if phase == SUCCEEDED else "False"
    conditions = set_condition(conditions, READY, ready, reason, message, generation=generation, now=now)
    patch: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "conditions": conditions,
        "observedGeneration": generation,
    }
    if not status.get("startTime"):
        patch["startTime"] = now
    if phase in TERMINAL_PHASES and not status.get("completionTime"):
        patch["completionTime"] = now
    return patch
