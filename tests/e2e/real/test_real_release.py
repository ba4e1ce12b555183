"""What a release publishes is what this run's real node ran: `hack/release/release.sh` packs the
image archives the e2e imported, byte for byte, so their manifest digests are the ones the node's
containerd holds under the same references (the images every other test here ran as pods)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from realnode import IMAGES, NODE, ROOT, VERSION

# The release reuses the images built before the cluster started (their inputs are unchanged),
# so it only links archives, packs two charts and writes SBOMs: minutes at most.
RELEASE_TIMEOUT_S = 900


def _manifest_digest(archive: Path) -> str:
    """The manifest digest of an oci-archive: what containerd records when it imports it."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None, f"{archive} has no index.json"
        index = json.load(member)
    manifests = index.get("manifests") or []
    assert len(manifests) == 1, f"{archive} holds {len(manifests)} manifests, not one image"
    return str(manifests[0]["digest"])


def _node_digests(node: dict[str, Any]) -> dict[str, set[str]]:
    """Each image reference on the node -> the digests the kubelet lists for that image."""
    digests: dict[str, set[str]] = {}
    for image in (node.get("status") or {}).get("images") or []:
        names = image.get("names") or []
        pinned = {name.split("@", 1)[1] for name in names if "@" in name}
        for name in names:
            if "@" not in name:
                digests.setdefault(name, set()).update(pinned)
    return digests


def test_the_release_archives_are_the_images_the_real_node_ran(
    real_node: Any, cluster: Any, tmp_path: Path
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
    node = json.loads(cluster.kubectl("get", "node", NODE, "-o", "json").stdout)
    on_node = _node_digests(node)
    for ref in IMAGES:
        image = ref.rsplit("/", 1)[1].split(":", 1)[0]
        archive = dist / f"{image}-{VERSION}.oci.tar"
        released = sorted(path.name for path in dist.iterdir())
        assert archive.is_file(), f"the release has no {archive.name}: {released}"
        digest = _manifest_digest(archive)
        assert ref in on_node, f"the node has no {ref}; it has {sorted(on_node)}"
        assert digest in on_node[ref], (
            f"{archive.name} is {digest}, but the node ran {ref} as {sorted(on_node[ref])}: "
            "the release would publish an image the e2e did not run"
        )
    sums = (dist / "SHA256SUMS").read_text()
    for ref in IMAGES:
        image = ref.rsplit("/", 1)[1].split(":", 1)[0]
        assert f"{image}-{VERSION}.oci.tar" in sums, f"SHA256SUMS does not cover the {image} archive"
