"""spec.training's schedule, clipping and augmentation fields: defaults that keep today's training,
and refusals that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from zthumb_contract.spec import LoRAFinetuneSpec, TrainingSpec


def test_the_defaults_train_as_before():
    training = TrainingSpec()
    assert training.lr_scheduler == "constant" and training.lr_warmup_steps == 0
    assert training.max_grad_norm == 1.0
    assert training.caption_dropout == 0 and training.random_flip is False


def test_the_fields_are_camel_case_in_a_manifest():
    spec = LoRAFinetuneSpec.from_manifest(
        {
            "spec": {
                "training": {
                    "lrScheduler": "cosine",
                    "lrWarmupSteps": 10,
                    "maxGradNorm": None,
                    "captionDropout": 0.1,
                    "randomFlip": True,
                }
            }
        }
    )
    training = spec.training
    assert (training.lr_scheduler, training.lr_warmup_steps, training.max_grad_norm) == ("cosine", 10, None)
    assert (training.caption_dropout, training.random_flip) == (0.1, True)


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({"lrWarmupSteps": 5}, r"spec\.training\.lrWarmupSteps 5 needs a schedule with a warm-up"),
        (
            {"lrScheduler": "linear", "lrWarmupSteps": 100, "maxTrainSteps": 100},
            r"spec\.training\.lrWarmupSteps 100 must be below maxTrainSteps 100",
        ),
        (
            {"lrScheduler": "polynomial", "learningRate": 1e-7},
            r"spec\.training\.learningRate 1e-07 must be above 1e-07 with lrScheduler polynomial",
        ),
        ({"lrScheduler": "step"}, r"lrScheduler"),
        ({"lrWarmupSteps": -1}, r"lrWarmupSteps"),
        ({"maxGradNorm": 0}, r"maxGradNorm"),
        ({"captionDropout": 1.5}, r"captionDropout"),
    ],
)
def test_refusals_name_the_field(fields, refusal):
    with pytest.raises(ValidationError, match=refusal):
        TrainingSpec.model_validate(fields)


def test_a_warmup_below_the_steps_with_a_warmup_schedule_is_accepted():
    training = TrainingSpec.model_validate(
        {"lrScheduler": "constant_with_warmup", "lrWarmupSteps": 99, "maxTrainSteps": 100}
    )
    assert training.lr_warmup_steps == 99
