"""What a step reports back into the LoRAFinetune status, as pydantic models.

The train step writes ``TrainResults`` (camelCase, the status' own shape) as the ``training``
block of its summary, which goes to its termination message; the operator reads that block back
through the same model into ``status.training``. The CRD's ``status.training`` mirrors the model
(``tests/unit/operator/test_crd.py`` keeps them in step).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

CUDA_MAX_ALLOCATED = "CUDAMaxAllocated"
PROCESS_MAX_RSS = "ProcessMaxRSS"


class TrainResults(BaseModel):
    # extra="ignore": a newer trainer may report more than this operator knows.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    # NaN/inf are refused: the status is JSON, and the API server rejects a patch that holds them.
    steps_per_second: float | None = Field(None, ge=0, allow_inf_nan=False)
    peak_memory_bytes: int | None = Field(None, ge=0)
    memory_kind: Literal["CUDAMaxAllocated", "ProcessMaxRSS"] | None = None
    device: str | None = Field(None, max_length=64)
    final_loss: float | None = Field(None, allow_inf_nan=False)

    def status(self) -> dict[str, Any]:
        """The ``status.training`` object (unknown values left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)

    @classmethod
    def from_report(cls, block: object) -> TrainResults | None:
        """The results in a train pod's ``training`` block, each bad value dropped on its own (a NaN
        loss must not cost the steps/s), or None when it is not an object."""
        if not isinstance(block, dict):
            return None
        data = dict(block)
        while True:
            try:
                return cls.model_validate(data)
            except ValidationError as error:
                bad = {str(e["loc"][0]) for e in error.errors() if e["loc"]}
                if not bad & set(data):
                    return None
                for key in bad:
                    data.pop(key, None)
