"""hack/images/oci_layers.py: the layer report of OCI archives and the torch-base sharing checks."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

MEDIA_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DEBIAN, TORCH, APP, OPERATOR = (f"sha256:{c * 64}" for c in "1234")


@pytest.fixture
def oci_layers(hack_script) -> ModuleType:
    return hack_script("oci_layers")


def blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/")


def write_archive(path: Path, layers: list[tuple[str, int]]) -> Path:
    """A minimal OCI layout tar: index.json -> manifest -> config, layers given as (diff id, size).

    Each layer's blob digest is derived from its diff id, so equal layers archive as equal blobs."""
    blobs: dict[str, bytes] = {}

    def add(document: dict) -> str:
        data = json.dumps(document).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest

    config = add({"rootfs": {"type": "layers", "diff_ids": [diff_id for diff_id, _ in layers]}})
    manifest_layers = [
        {"mediaType": MEDIA_GZIP, "digest": "sha256:" + hashlib.sha256(d.encode()).hexdigest(), "size": size}
        for d, size in layers
    ]
    manifest = add({"schemaVersion": 2, "config": {"digest": config}, "layers": manifest_layers})
    files = {"index.json": json.dumps({"manifests": [{"digest": manifest}]}).encode()}
    files.update({blob_path(digest): data for digest, data in blobs.items()})
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_reads_the_first_manifest_of_a_hand_made_layout(oci_layers, tmp_path):
    archive = oci_layers.read_archive(str(write_archive(tmp_path / "a.tar", [(DEBIAN, 10), (TORCH, 20)])))
    assert archive.diff_ids == [DEBIAN, TORCH]
    assert [layer["size"] for layer in archive.layers] == [10, 20]


def test_report_lists_layers_and_confirms_sharing(oci_layers, tmp_path, capsys):
    base = f"{DEBIAN} {TORCH}"
    shared = [(DEBIAN, 30_000_000), (TORCH, 2_000_000_000)]
    args = [
        f"zthumb={write_archive(tmp_path / 'z.tar', [*shared, (APP, 5)])}",
        f"trainer={write_archive(tmp_path / 't.tar', [*shared, (APP, 7)])}",
        f"operator={write_archive(tmp_path / 'o.tar', [(DEBIAN, 30_000_000), (OPERATOR, 1)])}",
    ]
    assert oci_layers.main([base, *args]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "zthumb: 3 layers, 2.03 GB in the archive"
    digest = "sha256:" + hashlib.sha256(TORCH.encode()).hexdigest()
    assert out[2] == f"  {digest[:19]}      2000.0 MB  tar+gzip"
    assert out[-1] == "shared: zthumb and trainer share torch-base's 2 layers (2.03 GB, identical digests)"


def test_a_trainer_on_another_base_fails_the_check(oci_layers, tmp_path, capsys):
    zthumb = write_archive(tmp_path / "z.tar", [(DEBIAN, 1), (TORCH, 2), (APP, 3)])
    trainer = write_archive(tmp_path / "t.tar", [(DEBIAN, 1), (APP, 2)])
    assert oci_layers.main([f"{DEBIAN} {TORCH}", f"zthumb={zthumb}", f"trainer={trainer}"]) == 1
    out = capsys.readouterr().out
    assert "NOT SHARED: trainer's first layers are not torch-base's" in out
    assert "NOT SHARED: zthumb and trainer archive the torch-base layers as different blobs" in out
    assert "shared: " not in out


def test_an_operator_holding_the_torch_layer_fails_but_the_debian_layer_is_allowed(oci_layers):
    archive = oci_layers.Archive
    base = [DEBIAN, TORCH]
    lean = {"operator": archive([], [DEBIAN, OPERATOR])}
    fat = {"operator": archive([], [DEBIAN, TORCH, OPERATOR])}
    assert oci_layers.sharing_lines(base, lean) == ([], True)
    assert oci_layers.sharing_lines(base, fat) == (
        ["NOT OK: the operator image holds a torch-base layer"],
        False,
    )


def test_no_base_means_no_checks(oci_layers):
    images = {"operator": oci_layers.Archive([], [TORCH])}
    assert oci_layers.sharing_lines([], images) == ([], True)
