"""Two step pods writing the same shared entry at once, as real processes that are both PID 1 (each
in its own PID namespace, as every pod's process is): the entry is published whole, once, and both
succeed with the same content, trial after trial."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from zthumb_trainer.local.http_serve import StaticServer

TRIALS = 10
FILES = 1000  # enough small files that unpacking takes long enough to overlap

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "--pid", "--fork", "true"], capture_output=True, check=False
        ).returncode,
        reason="unshare --pid (a PID namespace, as root) is not available: both writers could not be PID 1",
    ),
]

# Each writer imports what it needs, says "ready", waits for "go" (so the two start together
# whatever their import times), runs the step's code and prints what it got.
PREAMBLE = """
import os, sys
from pathlib import Path
assert os.getpid() == 1, os.getpid()
{imports}
print("ready", flush=True)
sys.stdin.readline()
"""
DATASET_WRITER = (
    PREAMBLE.format(
        imports="from zthumb_contract.dataset_spec import DatasetSourceSpec, HttpDatasetSource\n"
        "from zthumb_trainer.dataset.sources import fetch_source"
    )
    + """
url, sha256, cache = sys.argv[1:]
print(fetch_source(DatasetSourceSpec(http=HttpDatasetSource(url=url, sha256=sha256)), Path(cache)))
"""
)
MODEL_WRITER = (
    PREAMBLE.format(imports="from zthumb_trainer.fetch.verified import download, fetch_config")
    + """
url, sha256, output, config_url, config_dir = sys.argv[1:]
print(download(url, sha256, Path(output), progress=False).path)
fetch_config(config_url, Path(config_dir))
print(config_dir)
"""
)


def race(script: str, *args: str) -> list[str]:
    """Run two writers of ``script`` at once, each PID 1 of its own PID namespace; their stdouts."""
    writers = [
        subprocess.Popen(
            ["unshare", "--pid", "--fork", sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for writer in writers:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "ready\n", writer.communicate(timeout=60)[1]
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
        outputs = [writer.communicate(timeout=120) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    for writer, (_out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
    return [out for out, _err in outputs]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_prepare_steps_fetching_one_archive_publish_it_whole_once(tmp_path):
    members = {f"cats/{index:04d}.txt": f"caption {index}".encode() * 4 for index in range(FILES)}
    served = tmp_path / "served"
    served.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    (served / "d.zip").write_bytes(buffer.getvalue())
    sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
    with StaticServer(served) as server:
        for trial in range(TRIALS):
            cache = tmp_path / f"cache-{trial}"
            outputs = race(DATASET_WRITER, f"{server.url}/d.zip", sha256, str(cache))
            assert [out.splitlines()[-1] for out in outputs] == [str(cache / sha256)] * 2
            assert _tree(cache / sha256) == {**members, ".complete": b""}, f"trial {trial}"
            assert os.listdir(cache) == [sha256], f"trial {trial}: leftovers"


def test_two_fetch_model_steps_publish_the_model_and_its_configs_whole_once(tmp_path, tiny_model):
    model = tiny_model.single_file
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    expected_configs = None
    with StaticServer(tiny_model.root) as server:
        for trial in range(TRIALS):
            models = tmp_path / f"models-{trial}"
            output, config_dir = models / "base.safetensors", models / "base-config"
            race(MODEL_WRITER, f"{server.url}/{model.name}", sha256, str(output),
                 f"{server.url}/diffusers/", str(config_dir))  # fmt: skip
            assert output.read_bytes() == model.read_bytes(), f"trial {trial}"
            configs = _tree(config_dir)
            assert ".complete" in configs and "unet/config.json" in configs
            expected_configs = expected_configs or configs
            assert configs == expected_configs, f"trial {trial}"
            leftovers = sorted(
                set(os.listdir(models)) - {output.name, config_dir.name, f"{output.name}.verified"}
            )
            assert leftovers == [], f"trial {trial}"
