"""Datasets from where users keep them (``spec.dataset.source``): an HTTP(S) archive or an S3
bucket prefix, fetched by the prepare step into ``datasets/cache/<content hash>/`` on the volume.

* An archive is downloaded with the base model's code (``fetch.verified.verified_download``: resumable,
  bounded by ``spec.dataset.source.http.maxBytes``, SHA256-verified before anything is unpacked,
  ``spec.dataset.source.http.sha256`` named on a mismatch) into this writer's own file, and
  unpacked (``archives.unpack``: bounded memory, bytes, names and ratios) into this writer's own
  staging directory. Its content hash is its SHA256, so the same archive is fetched once.
* An S3 prefix is listed (paginated); its content hash is the SHA256 of the sorted (key, ETag, size)
  listing, so an unchanged prefix is not downloaded again. Unreachable endpoints, missing buckets
  and refused credentials are errors naming the field.
* Several prepare steps may fetch the same dataset at once (each pod's process is PID 1, so staging
  names carry a writer token, ``atomic.py``). The staging directory is renamed to its cache entry
  unless another writer's complete one is there: then this writer's copy is discarded and the
  winner's used. A folder at the entry without the ``.complete`` marker is not the cache's and is
  refused, naming the field, never replaced.
* The cache is bounded: each fetch marks its dataset used, then removes the datasets beyond the
  ``KEEP_DATASETS`` most recently used that nobody used for ``GRACE_SECONDS`` (another run's prepare
  step may be reading one right now), and partial downloads and staging directories older than
  that (a pod killed mid-fetch).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from zthumb_contract import env
from zthumb_contract.dataset_spec import DatasetSourceSpec, HttpDatasetSource, S3DatasetSource

from zthumb_trainer.atomic import publish_new_directory, staging_directory
from zthumb_trainer.dataset.archives import DEFAULT_LIMITS, Limits, SourceError, safe_name, unpack
from zthumb_trainer.fetch.verified import FetchError, verified_download

__all__ = ["COMPLETE", "KEEP_DATASETS", "Limits", "SourceError", "fetch_source", "prune_cache", "unpack"]

COMPLETE = ".complete"  # written last into a published dataset; its mtime is the last use
KEEP_DATASETS = 4
GRACE_SECONDS = 24 * 3600


def fetch_source(source: DatasetSourceSpec, cache: Path, limits: Limits = DEFAULT_LIMITS) -> Path:
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


def _cached(target: Path, field: str) -> bool:
    """True when ``target`` is a complete cache entry; a foreign folder there is refused."""
    if (target / COMPLETE).exists():
        return True
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise SourceError(
            f"{field}: {target} exists but is not a complete cached dataset (no {COMPLETE} marker): the "
            "prepare step did not write it, so it is left as it is; remove it to fetch the dataset"
        )
    return False


def _publish(staging: Path, target: Path, field: str) -> Path:
    """Publish this writer's ``staging`` as ``target`` unless another writer's complete copy is there
    already: then that one is used and this writer's is discarded."""
    (staging / COMPLETE).write_text("")
    if not publish_new_directory(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # this writer's own copy
        if not _cached(target, field):
            raise SourceError(f"{field}: {target} appeared while fetching, without {COMPLETE}")
        print(f"dataset {target.name}: another writer published it first; using theirs", file=sys.stderr)
    return target


# --- HTTP archives ----------------------------------------------------------------------------


def fetch_archive(http: HttpDatasetSource, cache: Path, limits: Limits = DEFAULT_LIMITS) -> Path:
    field = "spec.dataset.source.http"
    target = cache / http.sha256
    if _cached(target, field):
        print(f"dataset {http.url} already in {target} (sha256 {http.sha256})", file=sys.stderr)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    token = os.environ.get(env.DATASET_TOKEN) or None
    try:
        with verified_download(
            http.url, http.sha256, cache / f".{http.sha256}.archive", token=token, timeout=60.0,
            progress=True, field=field, max_bytes=http.max_bytes,
            allow_insecure_http=http.allow_insecure_http,
        ) as fetched:  # fmt: skip
            staging = staging_directory(target, "unpacking")
            try:
                unpack(fetched.path, staging, limits)
            except BaseException as error:
                shutil.rmtree(staging, ignore_errors=True)
                if isinstance(error, SourceError):  # verified but refused: fetching it again changes nothing
                    fetched.path.unlink(missing_ok=True)
                raise
            fetched.path.unlink(missing_ok=True)  # this writer's own download, unpacked
    except FetchError as error:
        raise SourceError(str(error)) from error
    except httpx.HTTPError as error:  # the partial download stays: the next attempt resumes it
        raise SourceError(f"{field}.url: downloading {http.url} failed: {error}") from error
    return _publish(staging, target, field)


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


def fetch_s3(s3: S3DatasetSource, cache: Path, limits: Limits = DEFAULT_LIMITS) -> Path:
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
    if _cached(target, "spec.dataset.source.s3"):
        print(f"dataset s3://{s3.bucket}/{s3.prefix} unchanged, in {target}", file=sys.stderr)
        return target
    if sum(size for _, _, size in objects) > limits.total_bytes:
        raise SourceError(f"spec.dataset.source.s3.prefix: more than {limits.total_bytes} bytes in all")
    staging = staging_directory(target, "downloading")
    try:
        for key, _etag, _size in objects:
            relative = safe_name(key[len(s3.prefix) :].lstrip("/"), "spec.dataset.source.s3.prefix")
            destination = staging.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            client.fget_object(s3.bucket, key, str(destination))
    except failures as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _s3_error(s3, error) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, target, "spec.dataset.source.s3")
