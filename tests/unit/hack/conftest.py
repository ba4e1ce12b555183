"""The hack/ scripts are not a package: their tests load each one as a module, by file name.

A script lives in one folder of hack/ (cluster, images, bench, gpu, lib, release, tools); its
name is unique across them, so a test names the script only."""

from __future__ import annotations

import gc
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

HACK = Path(__file__).resolve().parents[3] / "hack"


@pytest.fixture
def hack_script(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ModuleType]]:
    """``hack_script("bench_gc")`` imports hack/bench/bench_gc.py as module ``bench_gc`` for this test."""

    def load(name: str) -> ModuleType:
        found = sorted(HACK.glob(f"*/{name}.py"))
        assert len(found) == 1, f"hack/*/{name}.py: expected one script, found {found}"
        path = found[0]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        # dataclasses look their module up in sys.modules while the class is created.
        monkeypatch.setitem(sys.modules, name, module)
        # `python hack/<folder>/x.py` puts its folder first on the path, so a script imports its
        # siblings by name (and puts hack/lib there itself for bench_stats); the test loads it the
        # same way.
        monkeypatch.syspath_prepend(str(path.parent))
        spec.loader.exec_module(module)
        return module

    yield load
    # A benchmark freezes what it loaded, as the server does; the next test gets a whole collector.
    gc.unfreeze()
