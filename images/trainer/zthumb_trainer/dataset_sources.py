"""Datasets from where users keep them (``spec.dataset.source``): an HTTP(S) archive or an S3
bucket prefix, fetched by the prepare step into ``datasets/cache/<content hash>/`` on the volume.

* An archive is downloaded with the base model's code (resumable, SHA256-verified before anything
  is unpacked, ``spec.dataset.source.http.sha256`` named on a mismatch) and unpacked into a
  staging directory that is renamed into place: a reader never sees half a dataset. Its content
  hash is its SHA256, so the same archive is fetched and unpacked once.
* Unpacking trusts nothing in the archive: absolute names, ``..``, links and device files are
  refused; so are more than ``Limits.members`` entries, more than ``Limits.total_bytes`` unpacked
  (counted as written, not as declared) and a member that inflates more than ``Limits.ratio``
  times (a zip bomb). The error names the limit; nothing is written outside the staging directory.
* An S3 prefix is listed (paginated); its content hash is the SHA256 of the sorted (key, ETag, size)
  listing, so an unchanged prefix is not downloaded again. Unreachable endpoints, missing buckets
  and refused credentials are errors naming the field.
* The cache is bounded: each fetch marks its dataset used, then removes the datasets beyond the
  ``KEEP_DATASETS`` most recently used that nobody used for ``GRACE_SECONDS`` (another run's prepare
  step may be reading one right now), and partial downloads and staging directories older than
  that (a pod killed mid-fetch).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from zthumb_contract import env
from zthumb_contract.spec import DatasetSourceSpec, HttpDatasetSource, S3DatasetSource

from zthumb_trainer.atomic import fresh_directory, publish_directory

COMPLETE = ".complete"  # written last into a published dataset; its mtime is the last use
COPY_BLOCK = 1 << 20
KEEP_DATASETS = 4
GRACE_SECONDS = 24 * 3600


class SourceError(Exception):
    """The dataset could not be fetched; the message names the spec field to fix."""


@dataclass(frozen=True)
class Limits:
    members: int = 200_000
    total_bytes: int = 50 * 2**30
    ratio: float = 250.0  # unpacked / packed, per zip member and for a whole compressed tar


def fetch_source(source: DatasetSourceSpec, cache: Path, limits: Limits = Limits()) -> Path:
    """The directory holding the remote dataset's files, fetched into ``cache`` unless already there;
    then the cache is pruned (``prune_cache``)."""
    if source.http is not None:
        dataset = fetch_archive(source.http, cache, limits)
    elif source.s3 is not None:
        dataset = fetch_s3(source.s3, cache, limits)
    else:
        raise SourceError("spec.dataset.source names no remote source")
    (dataset / COMPLETE).touch()  # used now
    try:
        for removed in prune_cache(cache):
            print(
                f"dataset cache: removed {removed.name} (unused for over {GRACE_SECONDS // 3600} h)",
                file=sys.stderr,
            )
    except OSError as error:  # a full cache is a cost, not a reason to fail this run
        print(f"dataset cache: not pruned: {error}", file=sys.stderr)
    return dataset


def prune_cache(
    cache: Path, keep: int = KEEP_DATASETS, grace_seconds: float = GRACE_SECONDS, now: float | None = None
) -> list[Path]:
    """Remove what the cache no longer needs; returns what was removed.

    Published datasets: all but the ``keep`` most recently used, unless used within
    ``grace_seconds``. Leftovers of interrupted fetches (hidden partial archives and staging
    directories): when untouched for ``grace_seconds``, since a live fetch keeps writing them.
    """
    now = time.time() if now is None else now
    published: list[tuple[float, Path]] = []
    leftovers: list[tuple[float, Path]] = []
    for entry in cache.iterdir():
        if entry.name.startswith("."):
            leftovers.append((entry.lstat().st_mtime, entry))
        elif (entry / COMPLETE).is_file():
            published.append(((entry / COMPLETE).stat().st_mtime, entry))
    published.sort(reverse=True)
    stale = [entry for used, entry in published[keep:] + leftovers if now - used > grace_seconds]
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return stale


def _publish(staging: Path, target: Path) -> Path:
    (staging / COMPLETE).write_text("")
    return publish_directory(staging, target)


# --- HTTP archives ----------------------------------------------------------------------------


def fetch_archive(http: HttpDatasetSource, cache: Path, limits: Limits = Limits()) -> Path:
    from zthumb_trainer.fetch import FetchError, download

    target = cache / http.sha256
    if (target / COMPLETE).exists():
        print(f"dataset {http.url} already in {target} (sha256 {http.sha256})", file=sys.stderr)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f".{http.sha256}.archive"
    try:
        download(http.url, http.sha256, archive, token=os.environ.get(env.DATASET_TOKEN) or None,
                 field="spec.dataset.source.http")  # fmt: skip
    except FetchError as error:
        raise SourceError(str(error)) from error
    staging = fresh_directory(cache / f".{http.sha256}.unpacking-{os.getpid()}")
    try:
        unpack(archive, staging, limits)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    published = _publish(staging, target)
    archive.unlink(missing_ok=True)
    archive.with_name(archive.name + ".verified").unlink(missing_ok=True)
    return published


def _safe_name(name: str, field: str = "spec.dataset.source.http") -> PurePosixPath:
    """A member name as a relative path that stays inside the destination, or a SourceError."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise SourceError(f"{field}: {name!r} would be written outside the dataset directory; refused")
    return path


def _copy_limited(stream: IO[bytes], target: Path, budget: list[int], limit: int, name: str) -> int:
    """Copy ``stream`` to ``target``, counting what is written against ``budget`` (``[bytes left,
    the total limit]``) and the member's own ``limit``."""
    written = 0
    with target.open("wb") as out:
        while block := stream.read(COPY_BLOCK):
            written += len(block)
            budget[0] -= len(block)
            if budget[0] < 0:
                raise SourceError(
                    f"spec.dataset.source.http: the archive unpacks to more than {budget[1]} bytes in all "
                    "(the limit on a dataset archive, or its compression ratio: a zip bomb?)"
                )
            if written > limit:
                raise SourceError(
                    f"spec.dataset.source.http: member {name!r} inflates beyond the compression ratio limit "
                    "(a zip bomb?)"
                )
            out.write(block)
    return written


def unpack(archive: Path, destination: Path, limits: Limits = Limits()) -> None:
    """Unpack a zip or tar ``archive`` (detected by content) into ``destination``, safely."""
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, destination, limits)
    elif tarfile.is_tarfile(archive):
        _unpack_tar(archive, destination, limits)
    else:
        raise SourceError("spec.dataset.source.http: the file is neither a zip nor a tar archive")


def _unpack_zip(archive: Path, destination: Path, limits: Limits) -> None:
    budget = [limits.total_bytes, limits.total_bytes]
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        if len(members) > limits.members:
            raise SourceError(f"spec.dataset.source.http: more than {limits.members} entries in the archive")
        for member in members:
            path = _safe_name(member.filename)
            if stat.S_ISLNK(member.external_attr >> 16):
                raise SourceError(f"spec.dataset.source.http: {member.filename!r} is a symbolic link")
            target = destination.joinpath(*path.parts)
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            limit = int(max(member.compress_size, 1) * limits.ratio)
            if member.file_size > limit:
                raise SourceError(
                    f"spec.dataset.source.http: member {member.filename!r} inflates beyond the compression "
                    f"ratio limit ({limits.ratio:g}x; a zip bomb?)"
                )
            with bundle.open(member) as stream:
                _copy_limited(stream, target, budget, min(limit, member.file_size), member.filename)


def _unpack_tar(archive: Path, destination: Path, limits: Limits) -> None:
    # A compressed tar's members say nothing about compression: bound the whole archive's ratio.
    ratio_budget = int(max(archive.stat().st_size, 1) * limits.ratio)
    total = min(limits.total_bytes, ratio_budget)
    budget = [total, total]
    count = 0
    with tarfile.open(archive) as bundle:
        for member in bundle:
            count += 1
            if count > limits.members:
                raise SourceError(
                    f"spec.dataset.source.http: more than {limits.members} entries in the archive"
                )
            path = _safe_name(member.name)
            target = destination.joinpath(*path.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise SourceError(
                    f"spec.dataset.source.http: {member.name!r} is a {kind}; only files are accepted"
                )
            stream = bundle.extractfile(member)
            if stream is None:
                raise SourceError(f"spec.dataset.source.http: {member.name!r} cannot be read")
            target.parent.mkdir(parents=True, exist_ok=True)
            with stream:
                _copy_limited(stream, target, budget, ratio_budget, member.name)


# --- S3 -----------------------------------------------------------------------------------------


def _s3_client(s3: S3DatasetSource) -> Any:
    """A MinIO SDK client (the Apache-2.0 S3 client; boto3 cannot share an environment with the
    kubernetes client, their python-dateutil ranges do not meet), bounded in time and retries."""
    import urllib3
    from minio import Minio

    endpoint = urlsplit(s3.endpoint or "https://s3.amazonaws.com")
    if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
        raise SourceError(f"spec.dataset.source.s3.endpoint: {s3.endpoint!r} is not an http(s) URL")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=60), retries=urllib3.Retry(total=2, backoff_factor=0.5)
    )
    return Minio(
        endpoint.netloc, access_key=os.environ.get(env.AWS_ACCESS_KEY_ID) or None,
        secret_key=os.environ.get(env.AWS_SECRET_ACCESS_KEY) or None, secure=endpoint.scheme == "https",
        region=s3.region, http_client=http,
    )  # fmt: skip


def _s3_error(s3: S3DatasetSource, error: Exception) -> SourceError:
    from minio.error import S3Error

    where = f"s3://{s3.bucket}/{s3.prefix}" + (f" at {s3.endpoint}" if s3.endpoint else "")
    if isinstance(error, S3Error):
        if error.code == "NoSuchBucket":
            return SourceError(f"spec.dataset.source.s3.bucket: no bucket {s3.bucket!r} ({where})")
        if error.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            return SourceError(
                f"spec.dataset.source.s3.credentialsSecretRef: {where} refused the credentials ({error.code})"
            )
        return SourceError(f"spec.dataset.source.s3: {where}: {error.code}: {error.message}")
    return SourceError(f"spec.dataset.source.s3.endpoint: cannot reach {s3.endpoint or 'AWS S3'} ({error})")


def fetch_s3(s3: S3DatasetSource, cache: Path, limits: Limits = Limits()) -> Path:
    import urllib3
    from minio.error import MinioException

    failures = (MinioException, urllib3.exceptions.HTTPError, OSError)
    client = _s3_client(s3)
    objects: list[tuple[str, str, int]] = []
    try:
        for entry in client.list_objects(s3.bucket, prefix=s3.prefix, recursive=True):
            if entry.object_name.endswith("/"):
                continue
            objects.append((entry.object_name, entry.etag or "", int(entry.size or 0)))
            if len(objects) > limits.members:
                raise SourceError(f"spec.dataset.source.s3.prefix: more than {limits.members} objects")
    except failures as error:
        raise _s3_error(s3, error) from error
    if not objects:
        raise SourceError(f"spec.dataset.source.s3.prefix: no objects under s3://{s3.bucket}/{s3.prefix}")
    listing = "\n".join(f"{key}\t{etag}\t{size}" for key, etag, size in sorted(objects))
    digest = hashlib.sha256(f"{s3.endpoint}\n{s3.bucket}\n{listing}".encode()).hexdigest()
    target = cache / f"s3-{digest}"
    if (target / COMPLETE).exists():
        print(f"dataset s3://{s3.bucket}/{s3.prefix} unchanged, in {target}", file=sys.stderr)
        return target
    if sum(size for _, _, size in objects) > limits.total_bytes:
        raise SourceError(f"spec.dataset.source.s3.prefix: more than {limits.total_bytes} bytes in all")
    staging = fresh_directory(cache / f".s3-{digest}.downloading-{os.getpid()}")
    try:
        for key, _etag, _size in objects:
            relative = _safe_name(key[len(s3.prefix) :].lstrip("/"), "spec.dataset.source.s3.prefix")
            destination = staging.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(s3.bucket, key, str(destination))
    except failures as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _s3_error(s3, error) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, target)
