"""One reconcile pass of one run: the working status, the patch to write, the events to post;
and ``Outcome`` (``Wait``, ``Done`` or ``Failed``), what driving one stage came to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zthumb_contract.crd import format_time
from zthumb_contract.stages import FAILED

from zthumb_operator import conditions, metrics

Key = tuple[str, str]  # (namespace, name)


def resource_version(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def camel(step: str) -> str:
    return "".join(part.capitalize() for part in step.split("-"))


@dataclass(frozen=True)
class Wait:
    """The stage is not done yet: look again after ``requeue_after`` seconds, or (None) when an
    event (Job, pod, run) comes."""

    requeue_after: float | None = None


@dataclass(frozen=True)
class Done:
    """The stage is complete: its condition turns True (``reason``, ``message``), a Normal event
    ``event`` tells it, and the run goes on to the next stage."""

    reason: str
    message: str
    event: str
    duration_seconds: float | None = None  # observed as the step's duration, when known


@dataclass(frozen=True)
class Failed:
    """The stage failed, and the run with it: the stage's condition turns False and the run's phase
    Failed, both with ``reason`` and ``message`` (a Warning event)."""

    reason: str
    message: str


# What driving one stage came to; ``reconcile.Controller`` acts on it in one place.
Outcome = Wait | Done | Failed

WAIT = Wait()


def again_in(seconds: float) -> Wait:
    return Wait(requeue_after=seconds)


@dataclass
class Pass:
    """One reconcile of one run: the working status, the patch to write, the events to post."""

    run: dict[str, Any]
    now: float
    status: dict[str, Any] = field(default_factory=dict)
    patch: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.status = dict(self.run.get("status") or {})

    @property
    def stamp(self) -> str:
        return format_time(self.now)

    @property
    def generation(self) -> int | None:
        return self.run["metadata"].get("generation")

    def set(self, key: str, value: Any) -> None:
        if self.status.get(key) != value:
            self.status[key] = value
            self.patch[key] = value

    def condition(self, ctype: str, status: str, reason: str, message: str) -> None:
        current = conditions.get_condition(self.status.get("conditions"), ctype)
        if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            status,
            reason,
            message,
        ):
            return
        conds = conditions.set_condition(
            self.status.get("conditions") or [],
            ctype,
            status,
            reason,
            message,
            generation=self.generation,
            now=self.stamp,
        )
        self.set("conditions", conds)

    def phase(self, phase: str, reason: str, message: str, *, event: str | None = "Normal") -> None:
        old = (self.status.get("phase"), self.status.get("reason"))
        if old == (phase, reason) and self.status.get("message") == message:
            return
        fields = conditions.transition(
            self.status,
            phase=phase,
            reason=reason,
            message=message,
            generation=self.generation,
            now=self.stamp,
        )
        for key, value in fields.items():
            self.set(key, value)
        if old != (phase, reason):
            metrics.TRANSITIONS.labels(phase=phase).inc()
            # "<step> is running" is already told by the JobCreated event of that step.
            if event and reason != "Running":
                self.events.append((event, reason, f"{phase}: {message}"))

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def fail(self, condition: str, reason: str, message: str) -> None:
        """The stage whose condition is ``condition`` failed (a ``Failed`` outcome): so does the run."""
        self.condition(condition, "False", reason, message)
        self.phase(FAILED, reason, message, event="Warning")
