"""fetch-model: download the base checkpoint (and its small config files), verified by SHA256.

The checkpoint is large (6.9 GB for SDXL base), so the download is resumable and safe with
several writers at once (``download.py``: each writer's own partial file, abandoned ones adopted,
``maxBytes`` enforced, the token kept to its origin). Only a file whose SHA256 matches is
published, by a hard link that fails when another writer published first (``atomic.py``): the
loser discards its copy and verifies the winner's, so a reader of ``<output>`` never sees a
partial or wrong file and nothing a writer did not create is replaced.

The Hugging Face token is sent only to the origin of the URL it was given for: the Hub
answers with a redirect to a CDN whose signed URL must not receive it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
from zthumb_contract.spec import BASE_MODEL_MAX_BYTES
from zthumb_contract.volume_areas import VERIFIED_SUFFIX

from zthumb_trainer.atomic import (
    publish_new_directory,
    publish_new_file,
    staging_directory,
    write_text_atomically,
)
from zthumb_trainer.download import (
    ClaimLostError,
    FetchError,
    check_token_transport,
    claim_partial,
    discard_abandoned_partials,
    fetch_small,
    status_error,
    stream_into,
)
from zthumb_trainer.settings import TrainerSettings

__all__ = ["FetchError", "FetchResult", "download", "fetch_config", "sha256_of", "verified_download"]

HASH_BLOCK = 1 << 22
# How often a writer whose claim keeps being taken over tries again before giving up.
CLAIM_ATTEMPTS = 3
# A config or tokenizer file is a few MB at most (CLIP's tokenizer.json: 2 MB).
CONFIG_FILE_MAX_BYTES = 64 * 2**20

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


def _present(output: Path, expected: str, field: str) -> FetchResult | None:
    """The verified ``output`` when it is there; a file with other content is refused, not replaced."""
    if not output.exists():
        return None
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


@dataclass(frozen=True)
class Fetched:
    path: Path  # this writer's own verified file, to publish or consume before the block ends
    sha256: str
    downloaded_bytes: int


@contextmanager
def verified_download(
    url: str, sha256: str, output: Path, *, token: str | None, timeout: float, progress: bool,
    field: str, max_bytes: int, allow_insecure_http: bool,
) -> Iterator[Fetched]:  # fmt: skip
    """Download ``url`` into this writer's own partial file for ``output`` (resuming one it or a
    stopped writer left) and verify its SHA256; the block publishes or consumes the file while
    this writer's heartbeat still claims it. A mismatch removes the file and names ``field``."""
    check_token_transport(url, token, field, allow_insecure_http)
    expected = sha256.lower()
    for _ in range(CLAIM_ATTEMPTS):
        with claim_partial(output) as partial:
            try:
                downloaded = stream_into(
                    partial, url, token=token, timeout=timeout, max_bytes=max_bytes, field=field,
                    progress=progress,
                )  # fmt: skip
                actual = sha256_of(partial.path)
                partial.check()
            except ClaimLostError as lost:
                print(f"{lost}; starting over", file=sys.stderr)
                continue
            if actual != expected:
                partial.discard()
                raise FetchError(
                    f"sha256 mismatch for {url}\n  expected: {expected}\n  actual:   {actual}\n"
                    f"The partial download was removed. Check {field}.sha256 and {field}.url."
                )
            yield Fetched(partial.path, actual, downloaded)
            return
    raise FetchError(f"{url}: other writers kept taking over the partial download of {output}; try again")


def download(
    url: str,
    sha256: str,
    output: Path,
    *,
    token: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    field: str = "spec.baseModel",
    max_bytes: int = BASE_MODEL_MAX_BYTES,
    allow_insecure_http: bool = False,
) -> FetchResult:
    """Fetch ``url`` to ``output`` unless it is already there with ``sha256``; errors name the spec
    section ``field`` (its url, sha256, maxBytes, allowInsecureHttp)."""
    expected = sha256.lower()
    for _ in range(CLAIM_ATTEMPTS):
        present = _present(output, expected, field)
        if present is not None:
            return present
        with verified_download(
            url, expected, output, token=token, timeout=timeout, progress=progress, field=field,
            max_bytes=max_bytes, allow_insecure_http=allow_insecure_http,
        ) as fetched:  # fmt: skip
            try:
                published = publish_new_file(fetched.path, output)
            except FileNotFoundError:
                continue  # this writer froze and its file was adopted: verify what is there now
        if published:
            _write_stamp(output, fetched.sha256)
            discard_abandoned_partials(output)
            return FetchResult(output, fetched.sha256, fetched.downloaded_bytes, skipped=False)
        # Another writer published first: the next round verifies its file.
    raise FetchError(f"{url}: other writers kept taking over the download of {output}; try again")


def fetch_config(
    config_url: str,
    config_dir: Path,
    token: str | None = None,
    timeout: float = 60.0,
    *,
    required: tuple[str, ...] = REQUIRED_CONFIG_FILES,
    tokenizer_folders: tuple[str, ...] = ("tokenizer", "tokenizer_2"),
    field: str = "spec.baseModel",
    allow_insecure_http: bool = False,
) -> bool:
    """Fetch the ``required`` config files and the tokenizers (in ``tokenizer_folders``, "" for the
    repository's root) into ``config_dir``; False when they were already there. The defaults are
    SDXL's diffusers layout.

    ``config_dir`` is a shared cache entry: published whole (with its ``.complete`` marker) unless
    another writer published it first; a folder there without the marker is someone else's and is
    refused, naming ``{field}.configPath``, never replaced."""
    check_token_transport(config_url, token, field, allow_insecure_http)
    if _complete_config(config_dir, field):
        print(f"{config_dir} present; skipping config download", file=sys.stderr)
        return False
    base = config_url if config_url.endswith("/") else config_url + "/"
    staging = staging_directory(config_dir, "part")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            _fetch_config_files(client, base, staging, token, required, tokenizer_folders, field)
        (staging / CONFIG_COMPLETE_MARKER).write_text("")
        if publish_new_directory(staging, config_dir):
            return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # this writer's own; gone already when published
    if not _complete_config(config_dir, field):
        raise FetchError(
            f"{field}.configPath: {config_dir} appeared while fetching, without {CONFIG_COMPLETE_MARKER}"
        )
    return False


def _complete_config(config_dir: Path, field: str) -> bool:
    """True when a published config folder is there; a foreign, non-empty folder is an error."""
    if (config_dir / CONFIG_COMPLETE_MARKER).exists():
        return True
    if config_dir.is_dir() and any(config_dir.iterdir()):
        raise FetchError(
            f"{field}.configPath: {config_dir} exists but fetch-model did not write it (no "
            f"{CONFIG_COMPLETE_MARKER} marker); it is left as it is. Remove it or choose another "
            f"{field}.configPath."
        )
    if config_dir.exists() and not config_dir.is_dir():
        raise FetchError(f"{field}.configPath: {config_dir} is a file, not a folder; it is left as it is")
    return False


def _fetch_config_files(  # noqa: PLR0917 - the request and the layout
    client: httpx.Client, base: str, staging: Path, token: str | None, required: tuple[str, ...],
    tokenizer_folders: tuple[str, ...], field: str,
) -> None:  # fmt: skip
    def fetch(name: str) -> bool:
        return fetch_small(client, urljoin(base, name), token, staging / name, CONFIG_FILE_MAX_BYTES, field)

    for name in required:
        if not fetch(name):
            raise status_error(urljoin(base, name), 404, field)
    for folder in tokenizer_folders:
        prefix = f"{folder}/" if folder else ""
        found = {prefix + name for name in TOKENIZER_FILES if fetch(prefix + name)}
        has_vocab = {f"{prefix}vocab.json", f"{prefix}merges.txt"} <= found
        if f"{prefix}tokenizer.json" not in found and not has_vocab:
            raise FetchError(
                f"no tokenizer under {urljoin(base, prefix)}: expected tokenizer.json "
                "or vocab.json + merges.txt"
            )
