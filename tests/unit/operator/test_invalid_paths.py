"""A run whose path fields break the volume's rules (zthumb_contract.volume_areas) fails as an
InvalidSpec naming the field, before any Job touches the volume: the API server refuses such a spec,
but one that bypassed it (an older CRD, a direct etcd write) must not reach fetch-model."""

from __future__ import annotations

import pytest
from reconcile_harness import KEY, Harness


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("baseModel", {"configPath": "models"}, "spec.baseModel.configPath: 'models' is not below models/"),
        (
            "dataset",
            {"path": "datasets/cache/x"},
            "spec.dataset.path: 'datasets/cache/x' is, contains or lies",
        ),
        # Two fields that meet: a check of the whole spec, whose message starts with the field.
        (
            "baseModel",
            {"path": "models/sd/x.safetensors", "configPath": "models/sd"},
            "spec.baseModel.configPath:",
        ),
    ],
)
def test_a_path_past_the_api_server_fails_the_run_as_invalid_spec(
    section: str, values: dict[str, str], field: str
) -> None:
    h = Harness()
    h.controller.runs[KEY]["spec"][section].update(values)
    assert h.reconcile() is None
    st = h.status()
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert st["message"].startswith(f"invalid spec: {field}"), st["message"]
    assert "spec.:" not in st["message"]
    assert h.api.jobs == {}
