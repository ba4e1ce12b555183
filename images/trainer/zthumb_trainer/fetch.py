"""fetch-model: download the base checkpoint (and its small config files), verified by SHA256.

The checkpoint is large (6.9 GB for SDXL base), so the download is resumable: bytes
go to ``<output>.part`` and an interrupted transfer continues with an HTTP Range
request. Only a file whose SHA256 matches is renamed into place, so a reader of
``<output>`` never sees a partial or wrong file.

The Hugging Face token is sent only to the host of the URL it was given for: the Hub
answers with a redirect to a CDN whose signed URL must not receive it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from zthumb_contract.volume_areas import PARTIAL_SUFFIX, VERIFIED_SUFFIX

from zthumb_trainer.atomic import publish_directory, write_text_atomically
from zthumb_trainer.settings import TrainerSettings

MAX_REDIRECTS = 10
HASH_BLOCK = 1 << 22

# The diffusers configs a single-file SDXL checkpoint needs to load offline.
REQUIRED_CONFIG_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
)
# Tokenizers come as vocab.json + merges.txt (the SDXL repo) or one tokenizer.json
# (what current transformers writes); fetch whichever the server has.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
)
CONFIG_COMPLETE_MARKER = ".complete"


class FetchError(Exception):
    """A download failed in a way the user can act on; the message says how."""


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    downloaded_bytes: int
    skipped: bool


def token_from_env() -> str | None:
    return TrainerSettings().hf_token


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(output: Path) -> Path:
    return output.with_name(output.name + VERIFIED_SUFFIX)


def _file_identity(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_stamp(output: Path, sha256: str) -> None:
    """Record that ``output`` (as it is now: size and mtime) hashed to ``sha256``."""
    write_text_atomically(_stamp_path(output), json.dumps({"sha256": sha256, **_file_identity(output)}))


def _stamp_matches(output: Path, sha256: str) -> bool:
    """True when a stamp says this very file (same size and mtime) was verified as ``sha256``.

    Hashing SDXL's 6.9 GB takes tens of seconds; every server restart and every run's
    fetch-model step would pay it again without the stamp. Any change to the file (a
    rewrite, a truncation, a copy over it) changes its mtime and invalidates the stamp.
    """
    try:
        recorded = json.loads(_stamp_path(output).read_text())
        return bool(recorded == {"sha256": sha256, **_file_identity(output)})
    except (OSError, ValueError):
        return False


def _status_error(url: str, status: int) -> FetchError:
    if status in (401, 403):
        return FetchError(
            f"HTTP {status} for {url}: access denied. The model may be gated: open its page on "
            "huggingface.co, accept the licence, and provide a token with read access in HF_TOKEN "
            "(or HUGGINGFACE_HUB_TOKEN; in the cluster: baseModel.tokenSecretRef)."
        )
    if status == 404:
        return FetchError(
            f"HTTP 404 for {url}: not found. Check the URL (repository, revision and file name)."
        )
    return FetchError(f"HTTP {status} for {url}")


def _open_stream(
    client: httpx.Client, url: str, token: str | None, headers: dict[str, str]
) -> Iterator[httpx.Response]:
    """GET ``url`` following redirects by hand, so the token never leaves the original host."""
    token_host = urlsplit(url).hostname
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        request_headers = dict(headers)
        if token and urlsplit(current).hostname == token_host:
            request_headers["Authorization"] = f"Bearer {token}"
        with client.stream("GET", current, headers=request_headers) as response:
            if response.is_redirect:
                current = urljoin(current, response.headers["location"])
                continue
            yield response
            return
    raise FetchError(f"too many redirects fetching {url}")


def download(
    url: str,
    sha256: str,
    output: Path,
    *,
    token: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    field: str = "baseModel",
) -> FetchResult:
    """Fetch ``url`` to ``output`` unless it is already there with ``sha256``; errors name the spec
    section ``field`` (its url and sha256)."""
    from tqdm import tqdm

    expected = sha256.lower()
    if output.exists():
        if _stamp_matches(output, expected):
            print(f"{output} present and verified earlier (sha256 {expected}); skipping", file=sys.stderr)
            return FetchResult(output, expected, 0, skipped=True)
        actual = sha256_of(output)
        if actual == expected:
            print(f"{output} present with the expected sha256; skipping download", file=sys.stderr)
            _write_stamp(output, actual)
            return FetchResult(output, actual, 0, skipped=True)
        raise FetchError(
            f"{output} exists but its sha256 does not match.\n  expected: {expected}\n  actual:   {actual}\n"
            f"Remove the file (or fix {field}.sha256) and run again."
        )

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    downloaded = 0
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for response in _open_stream(client, url, token, headers):
            if response.status_code == 416 and offset:
                # The partial file already holds every byte (or is garbage): verify below.
                break
            if response.status_code not in (200, 206):
                raise _status_error(url, response.status_code)
            if response.status_code == 200 and offset:
                # The server ignored the Range header: start again from byte zero.
                print(f"server does not support resuming; restarting {output.name}", file=sys.stderr)
                offset = 0
            length = response.headers.get("content-length")
            total = offset + int(length) if length is not None else None
            mode = "ab" if offset else "wb"
            with (
                partial.open(mode) as handle,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    desc=output.name,
                    disable=not progress,
                    mininterval=1.0,
                ) as bar,
            ):
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    downloaded += len(chunk)
                    bar.update(len(chunk))

    actual = sha256_of(partial)
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise FetchError(
            f"sha256 mismatch for {url}\n  expected: {expected}\n  actual:   {actual}\n"
            f"The partial download was removed. Check {field}.sha256 and {field}.url."
        )
    os.replace(partial, output)
    _write_stamp(output, actual)
    return FetchResult(output, actual, downloaded, skipped=False)


def _fetch_small(client: httpx.Client, url: str, token: str | None) -> bytes | None:
    """The body of a small file, or None when the server says 404."""
    for response in _open_stream(client, url, token, {}):
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _status_error(url, response.status_code)
        return response.read()
    return None


def fetch_config(
    config_url: str,
    config_dir: Path,
    token: str | None = None,
    timeout: float = 60.0,
    *,
    required: tuple[str, ...] = REQUIRED_CONFIG_FILES,
    tokenizer_folders: tuple[str, ...] = ("tokenizer", "tokenizer_2"),
) -> bool:
    """Fetch the ``required`` config files and the tokenizers (in ``tokenizer_folders``, "" for the
    repository's root) into ``config_dir``; False when they were already there. The defaults are
    SDXL's diffusers layout."""
    if (config_dir / CONFIG_COMPLETE_MARKER).exists():
        print(f"{config_dir} present; skipping config download", file=sys.stderr)
        return False
    base = config_url if config_url.endswith("/") else config_url + "/"
    staging = config_dir.with_name(config_dir.name + PARTIAL_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    files: dict[str, bytes] = {}
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for name in required:
            body = _fetch_small(client, urljoin(base, name), token)
            if body is None:
                raise _status_error(urljoin(base, name), 404)
            files[name] = body
        for folder in tokenizer_folders:
            prefix = f"{folder}/" if folder else ""
            for name in TOKENIZER_FILES:
                body = _fetch_small(client, urljoin(base, prefix + name), token)
                if body is not None:
                    files[prefix + name] = body
            has_vocab = {f"{prefix}vocab.json", f"{prefix}merges.txt"} <= files.keys()
            if f"{prefix}tokenizer.json" not in files and not has_vocab:
                raise FetchError(
                    f"no tokenizer under {urljoin(base, prefix)}: expected tokenizer.json "
                    "or vocab.json + merges.txt"
                )
    for name, body in files.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    (staging / CONFIG_COMPLETE_MARKER).write_text("")
    publish_directory(staging, config_dir)
    return True
