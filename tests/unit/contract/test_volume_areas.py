"""The volume's areas: each spec path field names only its own area, never the pipeline's, and no
two fields meet. Reproduced bug: ``spec.baseModel.configPath: models`` was accepted, and fetch-model
replaced the whole models/ folder (base model, every adapter, the compile cache) with configs.

The same hostile values against the CRD (pattern and CEL) and the model side by side:
tests/unit/operator/test_crd_paths.py.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from zthumb_contract.eval_spec import ClipSpec, EvalSpec
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RunPaths
from zthumb_contract.volume_areas import (
    DATASET_CACHE,
    FIELDS_BY_NAME,
    LORA_ROOT,
    OUTPUTS,
    PATH_FIELDS,
    RESERVED_AREAS,
    PathField,
    is_within,
    overlaps,
    path_problem,
    value_at,
)


def refusal(spec: dict[str, object]) -> str:
    """The first error as the operator words it: ``spec.<field>: <why>``."""
    with pytest.raises(ValidationError) as caught:
        LoRAFinetuneSpec.model_validate(spec)
    error = caught.value.errors()[0]
    loc = ".".join(str(part) for part in error["loc"])
    return f"spec.{loc}: {error['msg']}" if loc else error["msg"]


def nested(name: str, value: str) -> dict[str, object]:
    *parents, leaf = name.split(".")
    spec: dict[str, object] = {leaf: value}
    for key in reversed(parents):
        spec = {key: spec}
    return spec


# One or two per rule, spelled for the field's area; tests/unit/operator/test_crd_paths.py tries
# more against the model and the CRD side by side.
HOSTILE = {
    "": "is empty",
    "{area}": "is not below {area}/",
    "outputs/x": "is not below {area}/",
    "{other}/x": "is not below {area}/",
    "{reserved}": "is, contains or lies inside {reserved}/",
    "{reserved}/x": "is, contains or lies inside {reserved}/",
    "{RESERVED}/x": "is, contains or lies inside {reserved}/",
    "{area}/": "ends with '/'",
    "/{area}/x": "is absolute",
    "{area}//x": "has an empty component",
    "a/../{area}": "starts or ends with '.'",
    "{area}/./x": "starts or ends with '.'",
    "{area}/.x": "starts or ends with '.'",
    "{area}/x.part": "the fetch step's working files",
    "{area}/x.Verified/y": "the fetch step's working files",
    "{fullwidth}/x": "(U+FF",
    "{area}\u2215x": "(U+2215)",
    "{area}/x\\y": "(U+005C)",
    "{area}/x\x00": "(U+0000)",
}


@pytest.mark.parametrize("field", PATH_FIELDS, ids=lambda f: f.name)
@pytest.mark.parametrize("template", list(HOSTILE), ids=repr)
def test_the_model_refuses_a_hostile_path_naming_the_field(field: PathField, template: str) -> None:
    (reserved,) = [area for area in RESERVED_AREAS if area.startswith(f"{field.area}/")]
    words = {
        "area": field.area,
        "other": ({"models", "datasets"} - {field.area}).pop(),
        "reserved": reserved,
        # The area itself is spelled exactly; below it, a case-insensitive volume ignores case.
        "RESERVED": f"{field.area}/{reserved.removeprefix(field.area + '/').upper()}",
        "fullwidth": chr(ord(field.area[0]) - ord("a") + 0xFF41) + field.area[1:],
    }
    message = refusal(nested(field.name, template.format(**words)))
    assert message.startswith(f"spec.{field.name}: "), message
    assert HOSTILE[template].format(**words) in message, message


def test_the_reproduced_bug_is_refused_with_why() -> None:
    message = refusal({"baseModel": {"configPath": "models"}})
    assert message == (
        "spec.baseModel.configPath: 'models' is not below models/: name a directory below models/ "
        "(fetch-model replaces it whole with the configs)"
    )


def test_a_field_set_to_another_fields_target_is_refused_naming_both() -> None:
    spec = LoRAFinetuneSpec()
    message = refusal({"eval": {"clip": {"configPath": spec.base_model.config_path}}})
    assert message.startswith("spec.eval.clip.configPath: 'models/sd_xl_base_1.0-config' is the same path as")
    assert "spec.baseModel.configPath" in message
    message = refusal({"baseModel": {"configPath": "models/sd", "path": "models/sd/model.safetensors"}})
    assert message.startswith("spec.baseModel.configPath: 'models/sd' contains spec.baseModel.path")


def test_the_defaults_and_the_local_runners_tiny_paths_pass() -> None:
    dumped = LoRAFinetuneSpec().model_dump(by_alias=True)
    for field in PATH_FIELDS:
        node = dumped
        for key in field.name.split("."):
            node = node[key]
        assert path_problem(field, node) is None, field.name
    LoRAFinetuneSpec.model_validate(
        {
            "baseModel": {"path": "models/tiny_sdxl.safetensors", "configPath": "models/tiny_sdxl-config"},
            "dataset": {"path": "datasets/z-style"},
            "eval": {
                "clip": {"path": "models/tiny_clip.safetensors", "configPath": "models/tiny_clip-config"}
            },
        }
    )


def test_a_section_validated_alone_still_checks_its_paths() -> None:
    """The trainer parses spec.eval from its --clip JSON option: the same rules apply there."""
    with pytest.raises(ValidationError) as caught:
        EvalSpec.model_validate({"clip": {"configPath": "models"}})
    assert caught.value.errors()[0]["loc"] == ("clip", "configPath")
    with pytest.raises(ValidationError):
        ClipSpec(path="outputs/x")


def test_comparisons_ignore_ascii_case_as_a_case_insensitive_volume_would() -> None:
    assert overlaps("models/LoRA", LORA_ROOT) and is_within("Models/Lora/x", LORA_ROOT)
    assert not overlaps("models/lora2", LORA_ROOT) and not is_within(LORA_ROOT, "models/lora/x")
    assert "models/lora" in refusal({"eval": {"clip": {"path": "models/LORA/x.safetensors"}}})


def test_the_reserved_areas_are_where_the_pipeline_writes() -> None:
    """Each RunPaths target the pipeline owns lies inside a reserved area, so no spec path reaches it."""
    paths = RunPaths(data_root="/data", run_name="run", spec=LoRAFinetuneSpec())
    owned = [paths.lora_root, paths.adapter_dir, paths.dataset_cache, paths.run_dir, paths.eval_dir]
    for target in owned:
        relative = target.removeprefix("/data/")
        assert any(is_within(relative, area) for area in RESERVED_AREAS), target
    assert (paths.lora_root, paths.dataset_cache) == (f"/data/{LORA_ROOT}", f"/data/{DATASET_CACHE}")
    assert paths.run_dir.startswith(f"/data/{OUTPUTS}/") and paths.eval_dir.startswith(f"/data/{OUTPUTS}/")


def test_the_table_names_each_field_once_in_its_own_area() -> None:
    assert len(FIELDS_BY_NAME) == len(PATH_FIELDS)
    for field in PATH_FIELDS:
        assert field.area in ("models", "datasets")
        assert field.target in ("file", "directory")


def test_each_refusal_has_its_error_type_and_says_how_the_paths_meet() -> None:
    with pytest.raises(ValidationError) as caught:
        LoRAFinetuneSpec.model_validate({"baseModel": {"configPath": "models"}})
    assert caught.value.errors()[0]["type"] == "volume_path"
    with pytest.raises(ValidationError) as caught:
        LoRAFinetuneSpec.model_validate(
            {"baseModel": {"path": "models/sd/model.safetensors", "configPath": "models/sd"}}
        )
    assert caught.value.errors()[0]["type"] == "volume_paths_overlap"
    # The later field inside the earlier one, and the earlier inside the later.
    inside = refusal({"baseModel": {"path": "models/sd", "configPath": "models/sd/config"}})
    assert inside.startswith("spec.baseModel.configPath: 'models/sd/config' lies inside spec.baseModel.path")
    assert inside.endswith("no two path fields may share a path or nest, since a directory target is "
                           "replaced whole and a file target overwritten")  # fmt: skip


def test_a_value_that_is_not_a_section_reads_as_absent() -> None:
    assert value_at({"eval": "clip"}, "eval.clip.path") is None
    assert value_at({"eval": {"clip": {"path": "models/c"}}}, "eval.clip.path") == "models/c"
    assert value_at({}, "eval.clip.path") is None
