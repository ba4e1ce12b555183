"""The API server refuses a LoRAFinetune whose path fields break the volume's rules, naming the field
(zthumb_contract.volume_areas; the CRD's pattern and CEL rules). Reproduced bug: a run with
``spec.baseModel.configPath: models`` was admitted, and fetch-model replaced the whole models/
folder. Every apply is ``--dry-run=server``: the full admission chain (defaulting, schema, CEL),
nothing stored.
"""

from __future__ import annotations

import pytest
from operator_harness import Kubectl, example
from zthumb_contract.volume_areas import PATH_FIELDS, PathField

pytestmark = pytest.mark.e2e

HOSTILE = [
    "models",
    ".",
    "models/lora",
    "models/lora/x",
    "models/LoRA/x",
    "outputs",
    "outputs/x",
    "datasets/cache",
    "datasets/cache/x",
    "datasets",
    "a/../models",
    "models/",
    "/models/x",
    "",
    "models//x",
    "models/x.part",
    "\uff4dodels/x",  # fullwidth m
    "models\u2215lora",  # division slash
]


def dry_run(kubectl: Kubectl, namespace: str, spec: dict[str, object]) -> tuple[int, str]:
    overrides = {name.replace(".", "__"): value for name, value in spec.items()}
    result = kubectl(
        "apply", "--dry-run=server", "-f", "-", input=example(namespace, **overrides), check=False
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize("field", PATH_FIELDS, ids=lambda f: f.name)
def test_hostile_paths_are_refused_naming_the_field(
    crd: None, namespace: str, kubectl: Kubectl, field: PathField
) -> None:
    for value in HOSTILE:
        rc, stderr = dry_run(kubectl, namespace, {field.name: value})
        assert rc != 0 and f"spec.{field.name}" in stderr, (value, stderr)


def test_two_fields_that_meet_are_refused_naming_the_later(
    crd: None, namespace: str, kubectl: Kubectl
) -> None:
    cases = [
        (
            {"baseModel.configPath": "models/sd", "baseModel.path": "models/sd/x.safetensors"},
            "baseModel.configPath",
        ),
        ({"eval.clip.configPath": "models/sd_xl_base_1.0-config"}, "eval.clip.configPath"),
        ({"eval.clip.path": "models/sd_xl_base_1.0.safetensors"}, "eval.clip.path"),
        ({"eval.clip.configPath": "models/SD_XL_BASE_1.0-config/x"}, "eval.clip.configPath"),
    ]
    for spec, refused in cases:
        rc, stderr = dry_run(kubectl, namespace, spec)
        assert rc != 0 and f"spec.{refused}" in stderr and "may not be, contain or lie inside" in stderr, (
            spec,
            stderr,
        )


def test_valid_paths_and_the_defaults_are_admitted(crd: None, namespace: str, kubectl: Kubectl) -> None:
    valid = {
        "baseModel.path": "models/sdxl/model.safetensors",
        "baseModel.configPath": "models/sdxl-config",
        "dataset.path": "datasets/my_style-2/v1.0",
        "eval.clip.path": "models/clip/weights.safetensors",
        "eval.clip.configPath": "models/lora2",
    }
    rc, stderr = dry_run(kubectl, namespace, valid)
    assert rc == 0, stderr
    rc, stderr = dry_run(kubectl, namespace, {})
    assert rc == 0, stderr
