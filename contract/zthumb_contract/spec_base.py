"""What every part of the LoRAFinetune spec model shares: the base class that maps the CRD's
camelCase names to snake_case and forbids unknown fields, a Secret key reference and a Secret's name, and the
ceiling of every download limit."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

MAX_DOWNLOAD_BYTES = 2**40
# A Secret's name: an RFC 1123 subdomain.
SECRET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class SpecModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(SpecModel):
    name: str
    key: str = "token"
