"""What the built images must be, as checks on their archived config and on what runs in them.

hack/images/check_images.py runs the checks on the archives hack/images/build-images.sh exports
(tests/e2e/test_built_images.py, in `make e2e`); this module holds the expectations and reads the
archives, without running anything:

- the config: it runs as uid/gid 10001; the ML images (zthumb, trainer) carry what the NVIDIA
  container runtime reads (``NVIDIA_DRIVER_CAPABILITIES=compute,utility`` and
  ``NVIDIA_REQUIRE_CUDA`` of their torch's CUDA major), the others no ``NVIDIA_*`` at all, and no
  image sets ``NVIDIA_VISIBLE_DEVICES`` (the device plugin does, per container);
- the commands run in the image as its own user and what their output must be: ``id -u``; the
  entrypoint (Entrypoint + Cmd, ``--help`` without a Cmd); the writable paths (``find / -xdev
  -writable``), only /tmp and the image's volumes; ``pip check``; in the ML images Triton's own
  build function compiles and imports a C extension (the C compiler and Python's headers
  torch.compile needs at run time), in the others there is no C compiler nor Python.h.

Standard library only.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UID = 10001
USER = f"{UID}:{UID}"
# The images with torch: the NVIDIA runtime's env and Triton's C compiler belong there only.
ML_IMAGES = frozenset({"zthumb", "trainer"})
PYTHON_IMAGES = frozenset({"zthumb", "trainer", "operator"})
NVIDIA_CAPABILITIES = "compute,utility"
# Every command in an image is bounded: a hung one must not hang the tests.
COMMAND_TIMEOUT_S = 600
# Below /tmp and each volume anything may be written; elsewhere nothing.
RUNTIME_WRITABLE = ("/tmp",)
# The writable scan, as the image's user: the root filesystem only (-xdev), without the kernel's
# and the runtime's mounts.
WRITABLE_SCAN = [
    "find", "/", "-xdev",
    "(", "-path", "/proc", "-o", "-path", "/sys", "-o", "-path", "/dev", ")", "-prune",
    "-o", "-writable", "-print",
]  # fmt: skip
# A message of find itself on stderr ("/usr/bin/find: '/root': Permission denied").
FIND_MESSAGE = re.compile(r"^(?:\S*/)?find: ")
# What Triton does before the first compiled kernel runs on a GPU (triton.runtime.build: the C
# compiler from CC or PATH, Python's include directory from sysconfig), here on a C extension of
# its own: it needs neither a GPU nor the CUDA driver.
TRITON_BUILD_PROBE = """
from triton.runtime.build import compile_module_from_src
src = '''#include <Python.h>
static struct PyModuleDef probe = {PyModuleDef_HEAD_INIT, "zthumb_cc_probe", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_zthumb_cc_probe(void) { return PyModule_Create(&probe); }
'''
print(compile_module_from_src(src, "zthumb_cc_probe").__name__)
"""
TORCH_CUDA_PROBE = "import torch; print(torch.version.cuda or '')"
# No C compiler on PATH, no Python.h anywhere on the root filesystem.
NO_COMPILER_PROBE = (
    'for c in cc gcc clang; do if command -v "$c"; then exit 1; fi; done; '
    'found=$(find / -xdev -name Python.h -print); [ -z "$found" ] || { echo "$found"; exit 1; }'
)


# --- the archive ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedImage:
    """One exported image: its name, archive and OCI config (the ``config`` section of it)."""

    name: str
    archive: Path
    config_digest: str
    config: dict[str, Any]

    @property
    def image_id(self) -> str:
        """The id of the image in buildah's storage: its config digest without ``sha256:``."""
        return self.config_digest.removeprefix("sha256:")


def _json_member(tar: tarfile.TarFile, archive: Path, member: str) -> Any:
    try:
        data = tar.extractfile(member)
    except KeyError:
        data = None
    if data is None:
        raise ValueError(f"{archive}: no {member} in the archive (not an OCI archive?)")
    return json.load(data)


def read_archived_image(name: str, archive: Path) -> ArchivedImage:
    """The config of the first manifest of an OCI layout tar (as `buildah push oci-archive:` writes it)."""
    with tarfile.open(archive) as tar:
        index = _json_member(tar, archive, "index.json")
        manifest = _json_member(tar, archive, "blobs/" + index["manifests"][0]["digest"].replace(":", "/"))
        digest = manifest["config"]["digest"]
        config = _json_member(tar, archive, "blobs/" + digest.replace(":", "/"))
    return ArchivedImage(name, archive, digest, config.get("config") or {})


# --- checks on the config (pure) --------------------------------------------------------------


def env_of(config: dict[str, Any]) -> dict[str, str]:
    """The image's environment as a dict (the config holds ``NAME=value`` strings)."""
    return dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)


def entry_argv(config: dict[str, Any]) -> list[str]:
    """What the image runs by default, made to answer at once: Entrypoint + Cmd, ``--help`` for no Cmd."""
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if not entrypoint:
        return cmd
    return entrypoint + (cmd or ["--help"])


def volumes_of(config: dict[str, Any]) -> list[str]:
    return sorted(config.get("Volumes") or {})


def user_problems(config: dict[str, Any]) -> list[str]:
    user = config.get("User") or ""
    if user not in (str(UID), USER):
        return [f"config User is {user!r}, not {USER} (Pod Security restricted: a non-root uid)"]
    return []


def entrypoint_problems(config: dict[str, Any]) -> list[str]:
    if not entry_argv(config):
        return ["neither Entrypoint nor Cmd: the image runs nothing by default"]
    return []


def cuda_requirement(torch_cuda: str) -> str:
    """``NVIDIA_REQUIRE_CUDA`` for a torch built with CUDA ``torch_cuda`` (``13.2``): its major, as
    the driver's minor version compatibility covers every minor of a major (``cuda>=13.0``)."""
    major = torch_cuda.split(".", 1)[0]
    if not major.isdigit():
        raise ValueError(f"torch's CUDA version {torch_cuda!r} is not MAJOR.MINOR")
    return f"cuda>={major}.0"


def nvidia_env_problems(name: str, env: dict[str, str], torch_cuda: str | None) -> list[str]:
    """The NVIDIA runtime's env: present and right in the ML images, absent elsewhere.

    ``torch_cuda`` is ``torch.version.cuda`` in the image (None where the image has no torch)."""
    nvidia = {key: value for key, value in env.items() if key.startswith("NVIDIA_")}
    problems = []
    if "NVIDIA_VISIBLE_DEVICES" in nvidia:
        problems.append(
            f"NVIDIA_VISIBLE_DEVICES={nvidia['NVIDIA_VISIBLE_DEVICES']} in the image: the device plugin "
            "sets it per container; an image default would hand GPUs to pods that requested none"
        )
    if name not in ML_IMAGES:
        problems += [f"{key}={value} in an image without torch" for key, value in sorted(nvidia.items())]
        return problems
    if nvidia.get("NVIDIA_DRIVER_CAPABILITIES") != NVIDIA_CAPABILITIES:
        problems.append(
            f"NVIDIA_DRIVER_CAPABILITIES is {nvidia.get('NVIDIA_DRIVER_CAPABILITIES')!r}, "
            f"not {NVIDIA_CAPABILITIES!r}"
        )
    if not torch_cuda:
        problems.append("torch in the image has no CUDA (torch.version.cuda is empty): a CPU-only wheel")
    elif nvidia.get("NVIDIA_REQUIRE_CUDA") != cuda_requirement(torch_cuda):
        problems.append(
            f"NVIDIA_REQUIRE_CUDA is {nvidia.get('NVIDIA_REQUIRE_CUDA')!r}, but the image's torch is "
            f"built with CUDA {torch_cuda}: {cuda_requirement(torch_cuda)!r}"
        )
    return problems


def _below(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def writable_problems(writable: Sequence[str], volumes: Sequence[str]) -> list[str]:
    """Paths the image's user may write outside /tmp and the volumes, and those of /tmp and the
    volumes it may not write (an image volume the user cannot write is of no use to it)."""
    allowed = [*RUNTIME_WRITABLE, *volumes]
    problems = [
        f"{path} is writable by uid {UID} (only /tmp and the volumes {list(volumes)} may be)"
        for path in writable
        if not any(_below(path, root) for root in allowed)
    ]
    present = set(writable)
    problems += [f"{root} is not writable by uid {UID}" for root in allowed if root not in present]
    return problems
