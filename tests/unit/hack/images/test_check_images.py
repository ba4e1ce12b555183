"""hack/images/check_images.py: which image the checks run in, and that its container goes away.

buildah is a stand-in here (a script that logs its arguments); the real runs are
tests/e2e/test_built_images.py."""

from __future__ import annotations

import stat
from pathlib import Path
from types import ModuleType

import pytest

IMAGE_ID = "ab" * 32


@pytest.fixture
def check_images(hack_script) -> ModuleType:
    return hack_script("check_images")


def fake_buildah(tmp_path: Path, *, has_image: bool) -> tuple[list[str], Path]:
    """A buildah that logs each call's arguments, one call a line, and knows IMAGE_ID or not."""
    log = tmp_path / "calls.log"
    script = tmp_path / "buildah"
    known = IMAGE_ID if has_image else ""
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$1" in\n'
        f'  inspect) [ -n "{known}" ] && echo "{known}" || exit 125 ;;\n'
        "  run) echo ran ;;\n"
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return [str(script)], log


def archived(check_images: ModuleType, tmp_path: Path):
    return check_images.ArchivedImage("operator", tmp_path / "operator.tar", f"sha256:{IMAGE_ID}", {})


def test_runs_in_the_stored_image_with_the_archives_config_digest(check_images, tmp_path):
    buildah, log = fake_buildah(tmp_path, has_image=True)
    with check_images.container(archived(check_images, tmp_path), buildah) as ctr:
        assert ctr.run(["id", "-u"]).stdout == "ran\n"
    calls = log.read_text().splitlines()
    name = ctr.name
    assert name.startswith("zthumb-check-operator-")
    assert calls[1] == f"from --pull=never --quiet --name {name} {IMAGE_ID}"
    assert calls[2] == f"run --isolation chroot {name} -- id -u"
    assert calls[3] == f"rm {name}"


def test_imports_the_archive_when_the_storage_lacks_the_image(check_images, tmp_path):
    buildah, log = fake_buildah(tmp_path, has_image=False)
    with check_images.container(archived(check_images, tmp_path), buildah):
        pass
    assert log.read_text().splitlines()[1].endswith(f" oci-archive:{tmp_path / 'operator.tar'}")


def test_the_container_is_removed_when_a_check_raises(check_images, tmp_path):
    buildah, log = fake_buildah(tmp_path, has_image=True)
    with pytest.raises(RuntimeError), check_images.container(archived(check_images, tmp_path), buildah):
        raise RuntimeError("a check failed")
    assert log.read_text().splitlines()[-1].startswith("rm zthumb-check-operator-")
