"""hack/images/image_checks.py: what the built images must be, judged on given configs and outputs."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ML_ENV = [
    "PATH=/opt/venv/bin:/usr/bin",
    "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    "NVIDIA_REQUIRE_CUDA=cuda>=13.0",
]


@pytest.fixture
def checks(hack_script) -> ModuleType:
    return hack_script("image_checks")


def write_archive(path: Path, config: dict) -> tuple[Path, str]:
    """A minimal OCI layout tar holding CONFIG (index.json -> manifest -> config); returns the
    path and the config's digest."""
    blobs: dict[str, bytes] = {}

    def add(document: dict) -> str:
        data = json.dumps(document).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    config_digest = add({"architecture": "amd64", "config": config, "rootfs": {"diff_ids": []}})
    manifest = add({"schemaVersion": 2, "config": {"digest": config_digest}, "layers": []})
    files = {"index.json": json.dumps({"manifests": [{"digest": manifest}]}).encode()}
    files.update({"blobs/" + digest.replace(":", "/"): data for digest, data in blobs.items()})
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, config_digest


def test_reads_the_config_the_archive_holds(checks, tmp_path):
    config = {"User": "10001:10001", "Entrypoint": ["zthumb", "serve"], "Volumes": {"/models": {}}}
    path, digest = write_archive(tmp_path / "zthumb.tar", config)
    image = checks.read_archived_image("zthumb", path)
    assert image.config == config
    assert image.config_digest == digest
    # buildah's image id is the config digest without its algorithm.
    assert image.image_id == digest.removeprefix("sha256:")


def test_an_archive_without_an_index_is_refused_naming_it(checks, tmp_path):
    path = tmp_path / "empty.tar"
    with tarfile.open(path, "w"):
        pass
    with pytest.raises(ValueError, match=r"empty\.tar: no index\.json"):
        checks.read_archived_image("operator", path)


@pytest.mark.parametrize(
    ("config", "argv"),
    [
        ({"Entrypoint": ["zthumb", "serve"]}, ["zthumb", "serve", "--help"]),
        ({"Entrypoint": ["zthumb-train"], "Cmd": ["--help"]}, ["zthumb-train", "--help"]),
        ({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["curl --version"]}, ["/bin/sh", "-c", "curl --version"]),
        ({"Cmd": ["/bin/bash"]}, ["/bin/bash"]),
        ({}, []),
    ],
)
def test_the_entrypoint_runs_with_its_cmd_or_help(checks, config, argv):
    assert checks.entry_argv(config) == argv
    assert bool(checks.entrypoint_problems(config)) == (not argv)


@pytest.mark.parametrize(("user", "ok"), [("10001:10001", True), ("10001", True), ("", False), ("0", False)])
def test_the_user_must_be_10001(checks, user, ok):
    assert (checks.user_problems({"User": user}) == []) is ok


def test_cuda_requirement_is_the_major_of_torchs_cuda(checks):
    assert checks.cuda_requirement("13.2") == "cuda>=13.0"
    assert checks.cuda_requirement("12.8") == "cuda>=12.0"
    with pytest.raises(ValueError, match=r"not MAJOR\.MINOR"):
        checks.cuda_requirement("x.1")


def test_an_ml_image_with_the_runtimes_env_passes(checks):
    assert checks.nvidia_env_problems("zthumb", checks.env_of({"Env": ML_ENV}), "13.2") == []


def test_an_ml_image_needs_capabilities_and_the_cuda_of_its_torch(checks):
    env = checks.env_of({"Env": ["NVIDIA_REQUIRE_CUDA=cuda>=12.0"]})
    problems = checks.nvidia_env_problems("trainer", env, "13.2")
    assert problems == [
        "NVIDIA_DRIVER_CAPABILITIES is None, not 'compute,utility'",
        "NVIDIA_REQUIRE_CUDA is 'cuda>=12.0', but the image's torch is built with CUDA 13.2: 'cuda>=13.0'",
    ]
    cpu_only = checks.nvidia_env_problems("trainer", checks.env_of({"Env": ML_ENV}), "")
    assert cpu_only == ["torch in the image has no CUDA (torch.version.cuda is empty): a CPU-only wheel"]


def test_no_image_sets_visible_devices_and_only_ml_images_nvidia_env(checks):
    visible = checks.env_of({"Env": [*ML_ENV, "NVIDIA_VISIBLE_DEVICES=all"]})
    assert checks.nvidia_env_problems("zthumb", visible, "13.2")[0].startswith("NVIDIA_VISIBLE_DEVICES=all")
    operator = checks.nvidia_env_problems("operator", checks.env_of({"Env": ML_ENV}), None)
    assert operator == [
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility in an image without torch",
        "NVIDIA_REQUIRE_CUDA=cuda>=13.0 in an image without torch",
    ]
    assert checks.nvidia_env_problems("helm-test", {"PATH": "/usr/bin"}, None) == []


def test_only_tmp_and_the_volumes_may_be_writable(checks):
    volumes = ["/models", "/models/lora"]
    ok = ["/models", "/models/lora", "/models/lora/x", "/tmp", "/tmp/.triton"]
    assert checks.writable_problems(ok, volumes) == []
    problems = checks.writable_problems([*ok, "/var/tmp", "/opt/venv/lib", "/modelsx"], volumes)
    assert problems == [
        f"{path} is writable by uid 10001 (only /tmp and the volumes ['/models', '/models/lora'] may be)"
        for path in ("/var/tmp", "/opt/venv/lib", "/modelsx")
    ]


def test_tmp_and_each_volume_must_be_writable(checks):
    assert checks.writable_problems(["/tmp"], ["/data"]) == ["/data is not writable by uid 10001"]
    assert checks.writable_problems([], []) == ["/tmp is not writable by uid 10001"]


def test_volumes_come_from_the_config(checks):
    assert checks.volumes_of({"Volumes": {"/models/lora": {}, "/models": {}}}) == ["/models", "/models/lora"]
    assert checks.volumes_of({"Volumes": None}) == []
