"""The LoRAFinetune CRD's identity and the time format of its status.

The CRD manifest (``crds/lorafinetunes.zthumb.io.yaml``) spells the same names; a
unit test keeps the two in step.
"""

from __future__ import annotations

from datetime import UTC, datetime

GROUP = "zthumb.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LoRAFinetune"
PLURAL = "lorafinetunes"
SHORT_NAME = "lft"
CATEGORY = "zthumb"
CRD_NAME = f"{PLURAL}.{GROUP}"

# RFC 3339 in UTC with a "Z", as Kubernetes writes times (lastTransitionTime, startTime, ...).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(TIME_FORMAT)


def parse_time(value: str) -> float:
    """RFC 3339 (as Kubernetes writes it) to epoch seconds (Python 3.11 reads the "Z")."""
    return datetime.fromisoformat(value).timestamp()


def utc_now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)
