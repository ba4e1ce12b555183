"""The contract package stays light, and the operator imports no trainer, server or ML code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "peft", "fastapi", "zthumb", "zthumb_trainer")


@pytest.mark.parametrize(
    "modules",
    [
        ["zthumb_contract.spec", "zthumb_contract.stages", "zthumb_contract.crd", "zthumb_contract.env"],
        ["zthumb_operator.handlers", "zthumb_operator.cli"],
    ],
)
def test_imports_no_heavy_packages(modules: list[str]) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_stage_table_is_consistent() -> None:
    from zthumb_contract.spec import LoRAFinetuneSpec
    from zthumb_contract.stages import PHASES, STAGES, build_steps

    names = [stage.name for stage in STAGES]
    assert len(set(names)) == len(names)
    assert len({stage.condition for stage in STAGES}) == len(STAGES)
    assert len(set(PHASES)) == len(PHASES)
    steps = build_steps("r", LoRAFinetuneSpec(), "/data", "http://s")
    assert [step.name for step in steps] == [stage.name for stage in STAGES if stage.step is not None]
