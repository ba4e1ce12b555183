"""The images as built and exported, checked without a cluster or a GPU (hack/images/image_checks.py).

`make e2e` builds the images (hack/images/build-images.sh --no-import) before these tests run; each
archive's config is read from the archive and the commands run in that very image with buildah
(hack/images/check_images.py). An image that is missing fails its tests: CI must not pass by
checking nothing. ``ZTHUMB_REAL_NODE=0``, the run that builds no image on purpose, skips them
and says so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The checks live beside build-images.sh (a plain folder of scripts, no package): put it on the path.
_IMAGES_DIR = str(Path(__file__).resolve().parents[2] / "hack" / "images")
if _IMAGES_DIR not in sys.path:
    sys.path.insert(0, _IMAGES_DIR)
import check_images  # noqa: E402
import image_checks  # noqa: E402

pytestmark = pytest.mark.e2e

IMAGES = ("zthumb", "trainer", "operator", "helm-test")


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    if os.environ.get("ZTHUMB_REAL_NODE") == "0":
        pytest.skip("ZTHUMB_REAL_NODE=0: `make e2e` built no images")
    return check_images.exported_archives()


@pytest.fixture(scope="module", params=IMAGES)
def image(request: pytest.FixtureRequest, archives: dict[str, Path]) -> image_checks.ArchivedImage:
    name: str = request.param
    archive = archives[name]
    if not archive.is_file():
        pytest.fail(
            f"{name}: no archive {archive}: build the images first (hack/images/build-images.sh --no-import)",
            pytrace=False,
        )
    return image_checks.read_archived_image(name, archive)


@pytest.fixture(scope="module")
def ctr(image: image_checks.ArchivedImage) -> Iterator[Any]:
    with check_images.container(image) as c:
        yield c


def test_runs_as_uid_10001(image, ctr):
    assert image_checks.user_problems(image.config) == []
    assert check_images.uid_problems(ctr) == []


def test_the_entrypoint_resolves_and_answers(image, ctr):
    assert image_checks.entrypoint_problems(image.config) == []
    argv = image_checks.entry_argv(image.config)
    assert check_images.run_problems(ctr, " ".join(argv), argv) == []


def test_only_tmp_and_the_volumes_are_writable(image, ctr):
    volumes = image_checks.volumes_of(image.config)
    writable = check_images.scan_writable(ctr, volumes)
    assert image_checks.writable_problems(writable, volumes) == []


def test_pip_check(image, ctr):
    if image.name not in image_checks.PYTHON_IMAGES:
        pytest.skip(f"{image.name} has no Python")
    assert check_images.run_problems(ctr, "pip check", ["python", "-m", "pip", "check"]) == []


def test_the_nvidia_runtime_env(image, ctr):
    cuda = check_images.torch_cuda(ctr) if image.name in image_checks.ML_IMAGES else None
    assert image_checks.nvidia_env_problems(image.name, image_checks.env_of(image.config), cuda) == []


def test_a_c_compiler_in_the_ml_images_only(image, ctr):
    assert check_images.compiler_problems(ctr, image.name) == []
