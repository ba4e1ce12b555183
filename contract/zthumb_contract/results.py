"""What a step reports back, as pydantic models: one declaration per block, read and written
through the same model by the trainer, the server's report pages and the operator.

* ``TrainResults``: the train step writes it (camelCase, the status' own shape) as the
  ``training`` block of its summary, which goes to its termination message; the operator reads it
  back into ``status.training``.
* ``EvalSummary``: the eval step's compact numbers, its termination message; the operator reads it
  back into ``status.evalSummary`` and the quality gate (``zthumb_contract.gate``) judges it.
* ``EvalReport``: the eval's ``summary.json`` (``eval_report.py``), which the server's report pages
  read.

The CRD's ``status.training`` and ``status.evalSummary`` mirror the models
(``tests/unit/operator/test_crd.py`` keeps them in step). Every model ignores keys it does not
know (a newer step may report more than this reader knows) and refuses NaN/inf: the status is
JSON, and the API server rejects a patch that holds them. ``from_report`` drops each bad value on
its own (a NaN loss must not cost the steps/s).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

CUDA_MAX_ALLOCATED = "CUDAMaxAllocated"
PROCESS_MAX_RSS = "ProcessMaxRSS"

# The most bad keys from_report drops before it gives up: bounds the retries on hostile input.
_MOST_DROPPED = 64


class Results(BaseModel):
    """A step's reported block: camelCase aliases, snake_case names accepted too."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def status(self) -> dict[str, Any]:
        """The block as the status holds it (camelCase, unknown values left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    @classmethod
    def from_report(cls, block: object) -> Self | None:
        """The results in ``block``, each top-level value that fails validation dropped on its own,
        or None when ``block`` is not an object."""
        if not isinstance(block, dict):
            return None
        data = dict(block)
        names = {info.alias: name for name, info in cls.model_fields.items() if info.alias}
        for _ in range(_MOST_DROPPED):
            try:
                return cls.model_validate(data)
            except ValidationError as error:
                # The error names a field by its alias; the block may spell it either way.
                bad = {names.get(str(e["loc"][0]), str(e["loc"][0])) for e in error.errors() if e["loc"]}
                keys = [key for key in data if names.get(key, key) in bad]
                if not keys:
                    return None
                for key in keys:
                    del data[key]
        return None


class TrainResults(Results):
    steps_per_second: float | None = Field(None, ge=0, allow_inf_nan=False)
    peak_memory_bytes: int | None = Field(None, ge=0)
    memory_kind: Literal["CUDAMaxAllocated", "ProcessMaxRSS"] | None = None
    device: str | None = Field(None, max_length=64)
    final_loss: float | None = Field(None, allow_inf_nan=False)


class EvalSummary(Results):
    """``status.evalSummary``: the evaluation's numbers, each None when it was not measured. The
    served scale is compared with the reference scale (the first of spec.eval.scales)."""

    # Strict: a bool or a numeric string is not a measurement (an int still is a float).
    model_config = ConfigDict(strict=True)

    requests: int | None = Field(None, ge=0)
    # Mean absolute pixel difference (0-255) against the reference scale, and its smallest pair.
    mean_pixel_difference: float | None = Field(None, ge=0, le=255, allow_inf_nan=False)
    min_pixel_difference: float | None = Field(None, ge=0, le=255, allow_inf_nan=False)
    mean_latency_seconds: float | None = Field(None, ge=0, allow_inf_nan=False)
    seconds: float | None = Field(None, ge=0, allow_inf_nan=False)
    served_scale: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    # CLIP-I and CLIP-T are cosines (-1..1), so their differences lie in -2..2.
    clip_i_gain: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    clip_t_drop: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    # 1 - the mean CLIP image similarity of prompts without the trigger at scale 0 and at the
    # served scale: 0 = untouched, up to 2.
    leakage: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    # DINO similarity to the training images (a cosine) at the served scale minus the reference's.
    dino_gain: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    # The LAION aesthetic score at the reference scale minus the served scale's (positive: worse
    # looking); the head is a linear regressor, so its scores have no hard bounds.
    aesthetic_drop: float | None = Field(None, allow_inf_nan=False)
    adapter_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # The scale the sweep over spec.eval.scales recommends serving (zthumb_contract.scale_sweep).
    recommended_scale: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
