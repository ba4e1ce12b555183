"""spec.dataset.source: HTTP(S) archives (verified, unpacked safely, cached by content) and S3
prefixes, the latter against a real S3-compatible server process (versitygw, built by
hack/cluster/build-versitygw.sh) on loopback."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from zthumb_contract.dataset_spec import DatasetSourceSpec, HttpDatasetSource, S3DatasetSource
from zthumb_trainer.dataset.sources import (
    COMPLETE,
    KEEP_DATASETS,
    Limits,
    SourceError,
    fetch_source,
    prune_cache,
    unpack,
)
from zthumb_trainer.fetch.verified import sha256_of
from zthumb_trainer.local.http_serve import StaticServer
from zthumb_trainer.local.run import free_port

ACCESS, SECRET = "ZTHUMBTESTKEY", "zthumb-test-secret-key"


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


DATASET = {"cats/a.png": b"\x89PNG a", "cats/a.txt": b"zt cat", "cats/b.png": b"\x89PNG b"}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_is_fetched_verified_unpacked_and_then_reused(tmp_path, kind):
    served = tmp_path / "served"
    served.mkdir()
    archive = (
        write_zip(served / "d.zip", DATASET) if kind == "zip" else write_tar(served / "d.tar.gz", DATASET)
    )
    cache = tmp_path / "cache"
    with StaticServer(served) as server:
        source = DatasetSourceSpec(
            http=HttpDatasetSource(url=f"{server.url}/{archive.name}", sha256=sha256_of(archive))
        )
        directory = fetch_source(source, cache)
    assert directory == cache / sha256_of(archive)
    assert (directory / "cats" / "a.txt").read_bytes() == b"zt cat"
    assert sorted(p.name for p in cache.iterdir()) == [directory.name]  # archive and staging gone
    assert fetch_source(source, cache) == directory  # the server is gone: the cache answered


def _published(cache: Path, name: str, used: float) -> Path:
    entry = cache / name
    (entry / "cats").mkdir(parents=True)
    (entry / "cats" / "a.png").write_bytes(b"\x89PNG")
    (entry / COMPLETE).write_text("")
    os.utime(entry / COMPLETE, (used, used))
    return entry


def test_the_cache_keeps_the_recently_used_and_removes_the_long_unused(tmp_path):
    cache, now, day = tmp_path / "cache", 1_000_000_000.0, 24 * 3600.0
    # Six datasets, last used 1 h to 6 days ago; the four most recent stay whatever their age.
    ages = {"d1": 3600, "d2": 2 * day, "d3": 3 * day, "d4": 4 * day, "d5": 5 * day, "d6": 6 * day}
    for name, age in ages.items():
        _published(cache, name, now - age)
    recent_extra = _published(cache, "d0", now - 60)  # a fifth within the grace: another run's
    unfinished = cache / "not-published"  # no marker: not the cache's to judge
    unfinished.mkdir()
    old_partial = cache / ".abc.archive"
    old_partial.write_bytes(b"half")
    os.utime(old_partial, (now - 2 * day, now - 2 * day))
    live_partial = cache / ".def.archive"
    live_partial.write_bytes(b"growing")
    os.utime(live_partial, (now - 60, now - 60))
    old_staging = cache / ".s3-1.downloading-7"
    old_staging.mkdir()
    os.utime(old_staging, (now - 2 * day, now - 2 * day))

    removed = prune_cache(cache, keep=4, grace_seconds=day, now=now)

    assert sorted(p.name for p in removed) == [".abc.archive", ".s3-1.downloading-7", "d4", "d5", "d6"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        ["d0", "d1", "d2", "d3", "not-published", ".def.archive"]
    )
    assert recent_extra.is_dir() and unfinished.is_dir() and live_partial.exists()


def test_a_fetch_marks_its_dataset_used_and_prunes_the_rest(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    archive = write_zip(served / "d.zip", DATASET)
    cache = tmp_path / "cache"
    long_ago = time.time() - 30 * 24 * 3600
    for index in range(KEEP_DATASETS + 2):
        _published(cache, f"old-{index}", long_ago + index)
    with StaticServer(served) as server:
        source = DatasetSourceSpec(
            http=HttpDatasetSource(url=f"{server.url}/{archive.name}", sha256=sha256_of(archive))
        )
        directory = fetch_source(source, cache)
    os.utime(directory / COMPLETE, (long_ago - 1, long_ago - 1))  # as if fetched long ago
    assert fetch_source(source, cache) == directory  # reused: marked used again, so it stays
    kept = sorted(p.name for p in cache.iterdir())
    newest_old = [f"old-{index}" for index in range(KEEP_DATASETS + 2)][-(KEEP_DATASETS - 1) :]
    assert kept == sorted([directory.name, *newest_old])


def test_an_archive_whose_sha256_differs_is_refused_naming_the_field(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    write_zip(served / "d.zip", DATASET)
    with StaticServer(served) as server:
        source = DatasetSourceSpec(http=HttpDatasetSource(url=f"{server.url}/d.zip", sha256="0" * 64))
        with pytest.raises(SourceError, match=r"(?s)sha256 mismatch.*spec\.dataset\.source\.http\.sha256"):
            fetch_source(source, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]


def test_a_cache_entry_the_prepare_step_did_not_write_is_refused_not_replaced(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    archive = write_zip(served / "d.zip", DATASET)
    cache = tmp_path / "cache"
    foreign = cache / sha256_of(archive)
    (foreign / "cats").mkdir(parents=True)
    (foreign / "cats" / "mine.png").write_bytes(b"somebody's")
    other_writer = cache / f".{sha256_of(archive)}.unpacking-1"  # another pod's staging, live
    other_writer.mkdir()
    (other_writer / "half.png").write_bytes(b"half")
    with StaticServer(served) as server:
        source = DatasetSourceSpec(
            http=HttpDatasetSource(url=f"{server.url}/d.zip", sha256=sha256_of(archive))
        )
        with pytest.raises(
            SourceError, match=r"spec\.dataset\.source\.http: .* not a complete cached dataset"
        ):
            fetch_source(source, cache)
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) == [
        f".{foreign.name}.unpacking-1/half.png",
        f"{foreign.name}/cats/mine.png",
    ]


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("dotdot", lambda p: write_zip(p, {"../evil.txt": b"x"})),
        ("absolute", lambda p: write_tar(p, {"/tmp/evil.txt": b"x"})),
        ("nested dotdot", lambda p: write_tar(p, {"a/../../evil.txt": b"x"})),
    ],
)
def test_paths_outside_the_dataset_are_refused(tmp_path, name, build):
    archive = build(tmp_path / "bad.archive")
    destination = tmp_path / "out" / "staging"
    destination.mkdir(parents=True)
    with pytest.raises(SourceError, match="outside the dataset directory"):
        unpack(archive, destination)
    assert not list(tmp_path.rglob("evil.txt")), name


def test_links_and_special_files_are_refused(tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as bundle:
        link = tarfile.TarInfo("cats/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bundle.addfile(link)
    with pytest.raises(SourceError, match="'cats/passwd' is a link"):
        unpack(archive, tmp_path / "out")
    zipped = tmp_path / "links.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        info = zipfile.ZipInfo("cats/passwd")
        info.external_attr = 0o120777 << 16  # a symbolic link
        bundle.writestr(info, "/etc/passwd")
    with pytest.raises(SourceError, match="symbolic link"):
        unpack(zipped, tmp_path / "out2")


def test_zip_bombs_are_refused(tmp_path):
    bomb = write_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(20 * 2**20)})  # 20 MiB of zeros, ~20 KiB
    with pytest.raises(SourceError, match="compression ratio limit"):
        unpack(bomb, tmp_path / "out")
    tar_bomb = write_tar(tmp_path / "bomb.tar.gz", {"zeros.bin": bytes(20 * 2**20)})
    (tmp_path / "out2").mkdir()
    with pytest.raises(SourceError, match="compression ratio"):
        unpack(tar_bomb, tmp_path / "out2")
    written = sum(p.stat().st_size for p in (tmp_path / "out2").rglob("*") if p.is_file())
    assert written <= tar_bomb.stat().st_size * Limits().ratio  # stopped at the ratio, not at 20 MiB


def test_the_size_and_count_limits_name_themselves(tmp_path):
    archive = write_zip(tmp_path / "d.zip", {f"{i}.txt": os.urandom(600) for i in range(3)})
    with pytest.raises(SourceError, match="more than 1000 bytes"):
        unpack(archive, tmp_path / "a", Limits(total_bytes=1000))
    with pytest.raises(SourceError, match="more than 2 entries"):
        unpack(archive, tmp_path / "b", Limits(members=2))
    not_an_archive = tmp_path / "x.bin"
    not_an_archive.write_bytes(b"plain bytes")
    with pytest.raises(SourceError, match="neither a zip nor a tar"):
        unpack(not_an_archive, tmp_path / "c")


# --- S3, against a real S3-compatible server -----------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    binary = shutil.which("versitygw")
    assert binary, (
        "versitygw is missing: run hack/cluster/build-versitygw.sh (make unit's k8s-bin target builds it)"
    )
    root = tmp_path_factory.mktemp("s3-root")
    port = free_port()
    log = (root.parent / "versitygw.log").open("wb")
    process = subprocess.Popen(
        [binary, "--access", ACCESS, "--secret", SECRET, "--port", f"127.0.0.1:{port}", "--quiet",
         "posix", str(root)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, (root.parent / "versitygw.log").read_text()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline, "versitygw did not listen in 30s"
        time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    from minio import Minio

    client = Minio(f"127.0.0.1:{port}", access_key=ACCESS, secret_key=SECRET, secure=False)
    client.make_bucket("training-data")
    for name, data in DATASET.items():
        client.put_object("training-data", f"datasets/{name}", io.BytesIO(data), len(data))
    client.put_object("training-data", "other/x.txt", io.BytesIO(b"not ours"), 8)
    yield endpoint
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def s3_source(endpoint: str, **overrides: str) -> DatasetSourceSpec:
    values = {"bucket": "training-data", "prefix": "datasets/", "endpoint": endpoint, **overrides}
    return DatasetSourceSpec(s3=S3DatasetSource.model_validate(values))


def test_an_s3_prefix_is_downloaded_and_reused_while_unchanged(tmp_path, s3_endpoint, credentials):
    cache = tmp_path / "cache"
    directory = fetch_source(s3_source(s3_endpoint), cache)
    files = sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != ".complete"
    )
    assert files == sorted(DATASET)  # the keys below the prefix, nothing else
    assert (directory / "cats" / "a.txt").read_bytes() == b"zt cat"
    (directory / "cats" / "a.txt").write_bytes(b"touched")
    assert fetch_source(s3_source(s3_endpoint), cache) == directory  # same listing: the cache
    assert (directory / "cats" / "a.txt").read_bytes() == b"touched"


def test_s3_keys_with_a_colon_are_ordinary_names(tmp_path, s3_endpoint, credentials):
    """A colon is no drive letter on the Linux volume: ``c:d/x.png`` below the prefix is a folder."""
    from minio import Minio

    client = Minio(s3_endpoint.removeprefix("http://"), access_key=ACCESS, secret_key=SECRET, secure=False)
    client.put_object("training-data", "colons/c:d/x.png", io.BytesIO(b"\x89PNG"), 4)
    directory = fetch_source(s3_source(s3_endpoint, prefix="colons/"), tmp_path / "cache")
    assert (directory / "c:d" / "x.png").read_bytes() == b"\x89PNG"


def test_wrong_s3_credentials_are_refused_naming_the_secret(tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SourceError, match=r"spec\.dataset\.source\.s3\.credentialsSecretRef: .* refused"):
        fetch_source(s3_source(s3_endpoint), tmp_path / "cache")


def test_a_missing_bucket_and_an_empty_prefix_name_their_fields(tmp_path, s3_endpoint, credentials):
    with pytest.raises(SourceError, match=r"spec\.dataset\.source\.s3\.bucket: no bucket 'no-such-bucket'"):
        fetch_source(s3_source(s3_endpoint, bucket="no-such-bucket"), tmp_path / "cache")
    with pytest.raises(SourceError, match=r"spec\.dataset\.source\.s3\.prefix: no objects"):
        fetch_source(s3_source(s3_endpoint, prefix="nothing-here/"), tmp_path / "cache")


def test_an_unreachable_endpoint_is_named(tmp_path, credentials, monkeypatch, record_property):
    import urllib3.util.connection

    attempts: list[tuple] = []
    connect = urllib3.util.connection.create_connection
    monkeypatch.setattr(
        urllib3.util.connection, "create_connection", lambda *a, **k: attempts.append(a) or connect(*a, **k)
    )
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"spec\.dataset\.source\.s3\.endpoint: cannot reach"):
        fetch_source(s3_source(closed), tmp_path / "cache")
    record_property("seconds", round(time.monotonic() - started, 2))
    assert 1 <= len(attempts) <= 3  # bounded retries (the first try and two more), not a hang


def test_the_prepare_step_argv_fetches_an_http_dataset_and_prepares_it(tmp_path, synthetic_dataset):
    """The operator's (and the local runner's) prepare-dataset argv, run through the trainer CLI."""
    from typer.testing import CliRunner
    from zthumb_contract.spec import LoRAFinetuneSpec
    from zthumb_contract.steps import RunPaths, prepare_dataset_step
    from zthumb_trainer.cli import app

    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cats.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(synthetic_dataset.iterdir()):
            bundle.write(file, f"cats/{file.name}")
    with StaticServer(served) as server:
        source = {"http": {"url": f"{server.url}/cats.zip", "sha256": sha256_of(archive)}}
        spec = LoRAFinetuneSpec.model_validate({"dataset": {"source": source, "resolution": 256}})
        step = prepare_dataset_step(RunPaths(str(tmp_path / "data"), "run", spec))
        result = CliRunner().invoke(app, list(step.args))
    assert result.exit_code == 0, result.output
    assert "8 images ready" in result.output
    assert (tmp_path / "data" / "datasets" / "cache" / sha256_of(archive) / "cats").is_dir()
    assert (tmp_path / "data" / "outputs" / "lora" / "run" / "dataset" / "manifest.json").exists()
