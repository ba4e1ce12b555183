"""What every part of the LoRAFinetune spec model shares: the base class that maps the CRD's
camelCase names to snake_case and forbids unknown fields, a Secret key reference, and the
ceiling of every download limit."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

MAX_DOWNLOAD_BYTES = 2**40


class SpecModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(SpecModel):
    name: str
    key: str = "token"
