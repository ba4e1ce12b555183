"""``spec.training.lrScheduler``: the learning-rate schedules (diffusers' ``get_scheduler`` names,
stepped once per optimizer step over ``maxTrainSteps``, warmed up linearly from 0 over
``lrWarmupSteps``) and the rules their fields obey together. The CRD's CEL rules on
``spec.training`` say the same, for a spec that bypassed the API server."""

from __future__ import annotations

from typing import Literal, Protocol

LrScheduler = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
]
# Where diffusers' polynomial schedule ends (its ``lr_end``, which it requires below the learning rate).
POLYNOMIAL_LR_END = 1e-7


class ScheduleFields(Protocol):
    """The fields of ``spec.training`` (``TrainingSpec``) a schedule depends on."""

    @property
    def lr_scheduler(self) -> str: ...
    @property
    def lr_warmup_steps(self) -> int: ...
    @property
    def max_train_steps(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...


def schedule_refusal(training: ScheduleFields) -> str | None:
    """Why these ``spec.training`` values make no schedule that runs, naming the field; None if they do."""
    scheduler, warmup_steps = training.lr_scheduler, training.lr_warmup_steps
    max_train_steps, learning_rate = training.max_train_steps, training.learning_rate
    if warmup_steps and scheduler == "constant":
        return (
            f"spec.training.lrWarmupSteps {warmup_steps} needs a schedule with a warm-up: "
            "lrScheduler constant has none (use constant_with_warmup)"
        )
    if warmup_steps >= max_train_steps:
        return (
            f"spec.training.lrWarmupSteps {warmup_steps} must be below maxTrainSteps {max_train_steps}: "
            "a run that only warms up never trains at its learning rate"
        )
    if scheduler == "polynomial" and learning_rate <= POLYNOMIAL_LR_END:
        return (
            f"spec.training.learningRate {learning_rate:g} must be above {POLYNOMIAL_LR_END:g} with "
            "lrScheduler polynomial: it decays to that"
        )
    return None
