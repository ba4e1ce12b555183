"""Report the layers of OCI image archives and check that the ML images share torch-base's.

    python3 hack/images/oci_layers.py "BASE_DIFF_ID ..." NAME=ARCHIVE.tar ...

Prints each archive's layers (from its OCI manifest), then checks that zthumb and trainer start
with every layer of torch-base (same diff ids, archived as the same blobs) and that the operator
holds none of them (its first, the Debian base, is shared on purpose). Exit status 1 when a
check fails. BASE_DIFF_ID... is torch-base's rootfs (empty: no sharing checks). Standard library
only: hack/images/build-images.sh runs it with the host's python3.
"""

from __future__ import annotations

import json
import sys
import tarfile
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Archive:
    """One image archive: its manifest's layers (compressed blobs) and its config's diff ids."""

    layers: list[dict[str, Any]]
    diff_ids: list[str]


def _json_member(tar: tarfile.TarFile, path: str, member: str) -> Any:
    data = tar.extractfile(member)
    if data is None:
        raise SystemExit(f"{path}: {member} is not a regular file")
    return json.load(data)


def read_archive(path: str) -> Archive:
    """The first manifest of an OCI layout tar (as `buildah push oci-archive:` writes it)."""
    with tarfile.open(path) as tar:
        index = _json_member(tar, path, "index.json")
        digest = index["manifests"][0]["digest"]
        manifest = _json_member(tar, path, "blobs/" + digest.replace(":", "/"))
        config = _json_member(tar, path, "blobs/" + manifest["config"]["digest"].replace(":", "/"))
    return Archive(manifest["layers"], config["rootfs"]["diff_ids"])


def layer_lines(name: str, archive: Archive) -> list[str]:
    """The report's lines for one image: a summary, then a line per layer."""
    total = sum(layer["size"] for layer in archive.layers)
    lines = [f"{name}: {len(archive.layers)} layers, {total / 1e9:.2f} GB in the archive"]
    for layer in archive.layers:
        kind = layer["mediaType"].rsplit(".", 1)[-1]
        lines.append(f"  {layer['digest'][:19]}  {layer['size'] / 1e6:10.1f} MB  {kind}")
    return lines


def sharing_lines(base: list[str], images: dict[str, Archive]) -> tuple[list[str], bool]:
    """The sharing checks' lines and whether they all passed."""
    lines: list[str] = []
    ok = True
    if base and {"zthumb", "trainer"} <= images.keys():
        for name in ("zthumb", "trainer"):
            if images[name].diff_ids[: len(base)] != base:
                lines.append(f"NOT SHARED: {name}'s first layers are not torch-base's")
                ok = False
        zthumb, trainer = (images[name].layers[: len(base)] for name in ("zthumb", "trainer"))
        if [layer["digest"] for layer in zthumb] != [layer["digest"] for layer in trainer]:
            lines.append("NOT SHARED: zthumb and trainer archive the torch-base layers as different blobs")
            ok = False
        if ok:
            size = sum(layer["size"] for layer in zthumb)
            lines.append(
                f"shared: zthumb and trainer share torch-base's {len(base)} layers "
                f"({size / 1e9:.2f} GB, identical digests)"
            )
    # base[0] is the Debian base, which the operator is built on too.
    if base and "operator" in images and set(base[1:]) & set(images["operator"].diff_ids):
        lines.append("NOT OK: the operator image holds a torch-base layer")
        ok = False
    return lines, ok


def report(base: list[str], images: dict[str, Archive]) -> tuple[list[str], bool]:
    """The whole report: every image's layers, then the sharing checks."""
    lines = [line for name, archive in images.items() for line in layer_lines(name, archive)]
    checks, ok = sharing_lines(base, images)
    return lines + checks, ok


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit('usage: oci_layers.py "BASE_DIFF_ID ..." NAME=ARCHIVE.tar ...')
    base = argv[0].split()
    images = {}
    for arg in argv[1:]:
        name, path = arg.split("=", 1)
        images[name] = read_archive(path)
    lines, ok = report(base, images)
    for line in lines:
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
