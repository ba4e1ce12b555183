"""What a release publishes is what the real node runs: `hack/release/release.sh` packs the image
archives this e2e imported, so a pod of each image the release holds runs, on the real node, the
very image of the archive (its image ID, the config digest, is the archive's)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from realnode import IMAGES, ROOT, VERSION, assert_ran_on_real_node, get_json, pod_manifest, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]

# The release reuses the images built before the cluster started (their inputs are unchanged),
# so it only links archives, packs two charts and writes SBOMs: minutes at most.
RELEASE_TIMEOUT_S = 900
POD_TIMEOUT_S = 180


def _archive_ids(archive: Path) -> tuple[str, str]:
    """(manifest digest, config digest) of the one image in an oci-archive. containerd keeps the
    manifest under the image's name and reports the config digest as the image ID of a pod."""
    with tarfile.open(archive) as tar:

        def blob(name: str) -> Any:
            member = tar.extractfile(name)
            assert member is not None, f"{archive} has no {name}"
            return json.load(member)

        manifests = blob("index.json").get("manifests") or []
        assert len(manifests) == 1, f"{archive} holds {len(manifests)} manifests, not one image"
        manifest_digest = str(manifests[0]["digest"])
        manifest = blob("blobs/" + manifest_digest.replace(":", "/"))
    return manifest_digest, str(manifest["config"]["digest"])


def _image_name(ref: str) -> str:
    return ref.rsplit("/", 1)[1].split(":", 1)[0]


def test_the_release_archives_are_the_images_the_real_node_runs(
    real_node: Any, real_ns: str, cluster: Any, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    proc = subprocess.run(
        ["hack/release/release.sh", "--dist", str(dist)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RELEASE_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"release.sh failed:\n{proc.stderr[-4000:]}"
    released = sorted(path.name for path in dist.iterdir())
    sums = (dist / "SHA256SUMS").read_text()
    kubectl = cluster.kubectl
    for ref in IMAGES:
        image = _image_name(ref)
        archive = dist / f"{image}-{VERSION}.oci.tar"
        assert archive.is_file(), f"the release has no {archive.name}: {released}"
        assert f"{archive.name}\n" in sums, f"SHA256SUMS does not cover {archive.name}"
        manifest_digest, config_digest = _archive_ids(archive)
        pod = pod_manifest(f"release-{image}", image=ref, command=["sh", "-c", "true"])
        kubectl("apply", "-n", real_ns, "-f", "-", input=json.dumps(pod))

        def finished(name: str = f"release-{image}") -> dict[str, Any] | None:
            found: dict[str, Any] = get_json(kubectl, "pod", name, "-n", real_ns)
            return found if found.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

        ran = wait_until(finished, POD_TIMEOUT_S, f"the {image} pod to finish")
        assert_ran_on_real_node(ran, completed=True)
        image_id = ran["status"]["containerStatuses"][0]["imageID"]
        # A digest reference when containerd has one for the image, else the image ID.
        assert image_id in (config_digest, f"{ref.rsplit(':', 1)[0]}@{manifest_digest}"), (
            f"{archive.name} holds {config_digest} (manifest {manifest_digest}), but the node ran "
            f"{ref} as {image_id}: the release would publish an image the e2e did not run"
        )
