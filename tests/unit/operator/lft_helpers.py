"""Shared helpers for the operator unit tests (no cluster); a unique module name, imported directly."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD_PATH = ROOT / "crds" / "lorafinetunes.zthumb.io.yaml"
EXAMPLE_PATH = ROOT / "manifests" / "examples" / "finetune.yaml"


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def crd_schema() -> dict[str, Any]:
    return load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it (defaults of absent fields, recursively)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for name, prop in (schema.get("properties") or {}).items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = apply_defaults(prop, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def make_run(
    spec: dict[str, Any] | None = None, name: str = "z-style", namespace: str = "ml"
) -> dict[str, Any]:
    """A LoRAFinetune as the API server returns it (CRD defaults applied)."""
    schema = crd_schema()
    body = {
        "apiVersion": "zthumb.io/v1alpha1",
        "kind": "LoRAFinetune",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "uid-1",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec or {},
    }
    body["spec"] = apply_defaults(schema["properties"]["spec"], body["spec"])
    return body
