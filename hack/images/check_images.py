"""Run the checks of hack/images/image_checks.py on the images hack/images/build-images.sh exported.

    python3 hack/images/check_images.py [IMAGE...]     (default: every exported image)

No GPU, no cluster: each archive's config is read from the archive, and the commands run with
``buildah run --isolation chroot`` (as the build's own smoke tests) in the image build-images.sh
has in its storage whose id is the archive's config digest: the very image the archive holds (the
id is the digest of the config, and the config names every layer by the digest of its content).
An archive whose image the storage no longer has is imported from the archive first. Prints one
line per check; exit status 1 when one fails or an archive is missing.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from image_checks import (
    COMMAND_TIMEOUT_S,
    FIND_MESSAGE,
    ML_IMAGES,
    NO_COMPILER_PROBE,
    PYTHON_IMAGES,
    TORCH_CUDA_PROBE,
    TRITON_BUILD_PROBE,
    UID,
    WRITABLE_SCAN,
    ArchivedImage,
    entry_argv,
    entrypoint_problems,
    env_of,
    nvidia_env_problems,
    read_archived_image,
    user_problems,
    volumes_of,
    writable_problems,
)

BUILD_SCRIPT = Path(__file__).resolve().parent / "build-images.sh"


# --- running commands in the image ------------------------------------------------------------


def build_script(*args: str) -> list[str]:
    """The lines build-images.sh prints for ARGS (`list`, `storage`)."""
    out = subprocess.run(
        [str(BUILD_SCRIPT), *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return out.splitlines()


def exported_archives() -> dict[str, Path]:
    """Image name -> the archive build-images.sh exports it to."""
    archives = {}
    for line in build_script("list"):
        name, _ref, archive = line.split(" ", 2)
        archives[name] = Path(archive)
    return archives


class Container:
    """A throwaway working container of one image in build-images.sh's buildah storage."""

    def __init__(self, buildah: list[str], name: str) -> None:
        self.buildah = buildah
        self.name = name

    def run(self, argv: Sequence[str], *, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """ARGV in the container, as the image's own user unless USER is given."""
        flags = ["--isolation", "chroot"] + (["--user", user] if user else [])
        return subprocess.run(
            [*self.buildah, "run", *flags, self.name, "--", *argv],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )


def _image_in_storage(buildah: list[str], image_id: str) -> bool:
    proc = subprocess.run(
        [*buildah, "inspect", "--type", "image", "--format", "{{.FromImageID}}", image_id],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() == image_id


@contextmanager
def container(image: ArchivedImage, buildah: list[str] | None = None) -> Iterator[Container]:
    """A container of IMAGE (the storage's image with the archive's config digest, else the
    archive imported), removed afterwards."""
    buildah = buildah or ["buildah", *build_script("storage")]
    source = image.image_id
    if not _image_in_storage(buildah, image.image_id):
        source = f"oci-archive:{image.archive}"
    name = f"zthumb-check-{image.name}-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [*buildah, "from", "--pull=never", "--quiet", "--name", name, source],
        check=True,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    try:
        yield Container(buildah, name)
    finally:
        subprocess.run([*buildah, "rm", name], capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)


def _failed(what: str, proc: subprocess.CompletedProcess[str]) -> str:
    tail = (proc.stdout + proc.stderr).strip()[-2000:]
    return f"{what} exited {proc.returncode}: {tail}"


def run_problems(ctr: Container, what: str, argv: Sequence[str]) -> list[str]:
    proc = ctr.run(argv)
    return [] if proc.returncode == 0 else [_failed(what, proc)]


def uid_problems(ctr: Container) -> list[str]:
    proc = ctr.run(["id", "-u"])
    if proc.returncode != 0:
        return [_failed("id -u", proc)]
    if proc.stdout.strip() != str(UID):
        return [f"the image's user runs as uid {proc.stdout.strip()}, not {UID}"]
    return []


def scan_writable(ctr: Container, volumes: Sequence[str] = ()) -> list[str]:
    """Every path of the root filesystem the image's user may write, and those of the image's
    VOLUMES it may write.

    find exits 1 on the directories the user may not read (/root, ...); nothing inside one is
    writable to it either. Any other error fails the scan. buildah mounts each volume of the
    image on its own, so -xdev does not enter a volume below another one (/models/lora below
    /models): each volume is asked directly."""
    proc = ctr.run(WRITABLE_SCAN)
    # Only find's own messages count: buildah adds its own lines about the exit status.
    errors = [
        line
        for line in proc.stderr.splitlines()
        if FIND_MESSAGE.match(line) and not line.endswith("Permission denied")
    ]
    if proc.returncode != 0 and errors:
        raise RuntimeError(_failed("find / -writable", proc))
    writable = {line for line in proc.stdout.splitlines() if line}
    writable |= {volume for volume in volumes if ctr.run(["test", "-w", volume]).returncode == 0}
    return sorted(writable)


def torch_cuda(ctr: Container) -> str:
    proc = ctr.run(["python", "-c", TORCH_CUDA_PROBE])
    if proc.returncode != 0:
        raise RuntimeError(_failed("import torch", proc))
    return proc.stdout.strip()


def compiler_problems(ctr: Container, name: str) -> list[str]:
    if name in ML_IMAGES:
        return run_problems(ctr, "Triton's C build (gcc + Python.h)", ["python", "-c", TRITON_BUILD_PROBE])
    proc = ctr.run(["/bin/sh", "-c", NO_COMPILER_PROBE])
    if proc.returncode != 0:
        return [f"a C compiler or Python.h in an image without torch: {proc.stdout.strip()}"]
    return []


def check_image(image: ArchivedImage, buildah: list[str] | None = None) -> dict[str, list[str]]:
    """Every check of one image: check name -> its problems (empty: passed)."""
    config = image.config
    results = {"user": user_problems(config), "entrypoint": entrypoint_problems(config)}
    with container(image, buildah) as ctr:
        results["uid"] = uid_problems(ctr)
        results["writable"] = writable_problems(scan_writable(ctr, volumes_of(config)), volumes_of(config))
        if not results["entrypoint"]:
            results["entrypoint"] = run_problems(ctr, " ".join(entry_argv(config)), entry_argv(config))
        if image.name in PYTHON_IMAGES:
            results["pip check"] = run_problems(ctr, "pip check", ["python", "-m", "pip", "check"])
        cuda = torch_cuda(ctr) if image.name in ML_IMAGES else None
        results["nvidia env"] = nvidia_env_problems(image.name, env_of(config), cuda)
        results["compiler"] = compiler_problems(ctr, image.name)
    return results


def main(argv: list[str]) -> int:
    archives = exported_archives()
    names = argv or list(archives)
    unknown = [name for name in names if name not in archives]
    if unknown:
        sys.exit(f"unknown image(s) {unknown} (one of: {', '.join(archives)})")
    failed = 0
    for name in names:
        if not archives[name].is_file():
            print(f"{name}: FAIL: no archive {archives[name]} (hack/images/build-images.sh --no-import)")
            failed += 1
            continue
        for check, problems in check_image(read_archived_image(name, archives[name])).items():
            print(f"{name}: {check}: " + ("ok" if not problems else "FAIL"))
            for problem in problems:
                print(f"  {problem}")
            failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
