"""HTTP downloads onto the shared volume: bounded, resumable, and safe with several writers at once.

Bytes go to a partial file of this writer's own, ``<output>.part-<writer token>``
(``atomic.writer_token``), never to a name another process appends to. A writer keeps its claim
alive with a heartbeat thread that touches the file every ``HEARTBEAT_SECONDS``, so its mtime says
whether a writer is still behind it. To resume, a writer first looks for a partial of the same
output: its own (an earlier attempt of this process), else one untouched for
``ABANDONED_SECONDS`` (its writer was killed, e.g. the pod before a restart), which it adopts by
renaming it to its own name. A rename succeeds for exactly one writer, on a local filesystem and
on NFS alike, so two writers never resume the same bytes; no advisory lock is relied on. A partial
touched within ``LIVE_SECONDS`` has a live writer and is left alone (each live writer downloads
to its own file); one in between is watched until it is one or the other, so a pod restarted
right after a kill still resumes instead of starting over.

A writer whose partial was adopted anyway (it froze for longer than ``ABANDONED_SECONDS``) learns
it from its heartbeat (its name no longer leads to its file) and stops with ``ClaimLostError``; the
bytes a frozen writer may still add before it notices fail the SHA256 check, never a publish.
The ages compare the file's mtime (set by the file server on NFS) with this node's clock: the
windows are wide enough for nodes whose clocks agree within seconds.

Every download is bounded by ``max_bytes`` (the spec's ``maxBytes``): a declared size (Content-
Length, Content-Range) over it is refused before a byte is written, and the stream is cut when it
passes it. A token is sent only to the origin (scheme, host, port) of the URL it was given for,
never after a redirect elsewhere, and never over plain http:// unless the spec allows it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import urljoin, urlsplit

import httpx
from zthumb_contract.volume_areas import PARTIAL_SUFFIX

from zthumb_trainer.atomic import staging_path, writer_token

MAX_REDIRECTS = 10
HEARTBEAT_SECONDS = 5.0
LIVE_SECONDS = 15.0
ABANDONED_SECONDS = 60.0
WATCH_SECONDS = 1.0
DEFAULT_PORTS = {"http": 80, "https": 443}


class FetchError(Exception):
    """A download failed in a way the user can act on; the message says how."""


class ClaimLostError(Exception):
    """Another writer adopted this writer's partial download (it looked abandoned)."""


def origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port or DEFAULT_PORTS.get(parsed.scheme)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token_transport(url: str, token: str | None, field: str, allow_insecure_http: bool) -> None:
    """Refuse to send ``token`` in clear text over http:// unless the spec says so. A loopback
    address is exempt: its traffic never leaves the machine (or the pod), which is how the local
    runner serves the tiny model to a developer whose shell may hold a real HF_TOKEN."""
    if token and origin(url)[0] == "http" and not allow_insecure_http and not _is_loopback(url):
        raise FetchError(
            f"{field}.url is plain http:// ({url}) and a token is set: it would travel unencrypted. "
            f"Use https://, or set {field}.allowInsecureHttp: true if the network is trusted."
        )


def status_error(url: str, status: int, field: str) -> FetchError:
    if status in (401, 403):
        return FetchError(
            f"HTTP {status} for {url}: access denied. The model may be gated: open its page on "
            "huggingface.co, accept the licence, and provide a token with read access in HF_TOKEN "
            f"(or HUGGINGFACE_HUB_TOKEN; in the cluster: {field}.tokenSecretRef)."
        )
    if status == 404:
        return FetchError(
            f"HTTP 404 for {url}: not found. Check the URL (repository, revision and file name)."
        )
    return FetchError(f"HTTP {status} for {url}")


@contextmanager
def open_stream(
    client: httpx.Client, url: str, token: str | None, headers: dict[str, str]
) -> Iterator[httpx.Response]:
    """GET ``url`` following redirects by hand, so the token never leaves its origin."""
    token_origin = origin(url)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        request_headers = dict(headers)
        if token and origin(current) == token_origin:
            request_headers["Authorization"] = f"Bearer {token}"
        with client.stream("GET", current, headers=request_headers) as response:
            if response.is_redirect:
                current = urljoin(current, response.headers["location"])
                continue
            yield response
            return
    raise FetchError(f"too many redirects fetching {url}")


def too_large(url: str, size: int, max_bytes: int, limit: str) -> FetchError:
    """``limit`` names the bound: a spec field (``spec.baseModel.maxBytes``) or a fixed one."""
    return FetchError(
        f"{url} is larger than {limit} ({size} > {max_bytes} bytes); refused, so a server that sends "
        "too much (or never stops) cannot fill the volume"
    )


class Partial:
    """This writer's claim on a partial download: the file, kept alive by a heartbeat thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode = path.stat().st_ino
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {path.name}", daemon=True)

    def __enter__(self) -> Partial:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                if os.stat(self.path).st_ino != self._inode:
                    raise FileNotFoundError(self.path)
                os.utime(self.path)
            except FileNotFoundError:
                self._lost.set()
                return

    def check(self) -> None:
        if self._lost.is_set():
            raise ClaimLostError(f"another writer took over {self.path.name}")

    def open_append(self) -> IO[bytes]:
        handle = self.path.open("ab")
        if os.fstat(handle.fileno()).st_ino != self._inode:
            handle.close()
            raise ClaimLostError(f"another writer took over {self.path.name}")
        return handle

    def restart(self) -> None:
        """Start again from byte zero in a new file: the old one may still be read by a writer
        that adopted it, so it is never truncated in place."""
        self.check()
        self.path.unlink()
        self.path.touch(exist_ok=False)
        self._inode = self.path.stat().st_ino

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _partials(output: Path) -> list[tuple[Path, os.stat_result]]:
    """Partial downloads of ``output`` by any writer (``<output>.part`` of older versions too)."""
    found = []
    for entry in output.parent.iterdir():
        partial = output.name + PARTIAL_SUFFIX
        if entry.name == partial or entry.name.startswith(f"{partial}-"):
            try:
                found.append((entry, entry.stat()))
            except FileNotFoundError:
                continue  # renamed or removed by its writer meanwhile
    return found


def _adopt(output: Path, own: Path) -> bool:
    """Rename the largest abandoned partial of ``output`` to ``own``; False when there is none left."""
    now = time.time()
    abandoned = [
        (info.st_size, path) for path, info in _partials(output) if now - info.st_mtime > ABANDONED_SECONDS
    ]
    for _size, path in sorted(abandoned, reverse=True):
        try:
            os.rename(path, own)
            # A rename keeps the mtime: until this touch, it still looks abandoned to the others.
            os.utime(own)
        except FileNotFoundError:
            continue  # another writer adopted it first (or in that instant, from this one)
        print(f"resuming the partial download {path.name} left by a stopped writer", file=sys.stderr)
        return True
    return False


def _undecided(output: Path, own: Path) -> bool:
    now = time.time()
    ages = [now - info.st_mtime for path, info in _partials(output) if path != own]
    return any(LIVE_SECONDS <= age <= ABANDONED_SECONDS for age in ages)


def claim_partial(output: Path) -> Partial:
    """This writer's partial file for ``output``: its own from an earlier attempt, an abandoned one
    adopted, or a new empty one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    own = output.with_name(f"{output.name}{PARTIAL_SUFFIX}-{writer_token()}")
    if not own.exists():
        deadline = time.monotonic() + ABANDONED_SECONDS
        while not _adopt(output, own) and _undecided(output, own) and time.monotonic() < deadline:
            time.sleep(WATCH_SECONDS)  # a writer stopped recently: wait until it is clearly gone
        own.touch()
    return Partial(own)


def discard_abandoned_partials(output: Path) -> None:
    """Remove the partials of ``output`` that stopped writers left (after ``output`` was published):
    each is first claimed by a rename to this writer's own name, so only one writer removes it."""
    now = time.time()
    for path, info in _partials(output):
        if now - info.st_mtime > ABANDONED_SECONDS:
            mine = staging_path(output, "discarded")
            try:
                os.rename(path, mine)
            except FileNotFoundError:
                continue
            mine.unlink()


def _declared_total(response: httpx.Response, offset: int) -> int | None:
    """The whole file's size as the response declares it, if it does."""
    content_range = response.headers.get("content-range", "")
    if response.status_code == 206 and "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    return offset + int(length) if length is not None else None


def stream_into(
    partial: Partial, url: str, *, token: str | None, timeout: float, max_bytes: int, field: str,
    progress: bool,
) -> int:  # fmt: skip
    """Append what ``partial`` lacks of ``url`` (an HTTP Range request when it holds some bytes);
    returns the bytes downloaded."""
    from tqdm import tqdm

    offset = partial.path.stat().st_size
    if offset > max_bytes:
        partial.restart()
        offset = 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    downloaded = 0
    with (
        httpx.Client(timeout=timeout, follow_redirects=False) as client,
        open_stream(client, url, token, headers) as response,
    ):
        if response.status_code == 416 and offset:
            return 0  # the partial file already holds every byte (or is garbage): verified next
        if response.status_code not in (200, 206):
            raise status_error(url, response.status_code, field)
        if response.status_code == 200 and offset:
            print(f"server does not support resuming; restarting {partial.path.name}", file=sys.stderr)
            partial.restart()
            offset = 0
        total = _declared_total(response, offset)
        if total is not None and total > max_bytes:
            partial.discard()  # what it holds is the start of a file that will never be accepted
            raise too_large(url, total, max_bytes, f"{field}.maxBytes")
        with partial.open_append() as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=partial.path.name,
            disable=not progress, mininterval=1.0,
        ) as bar:  # fmt: skip
            for chunk in response.iter_bytes():
                partial.check()
                if offset + downloaded + len(chunk) > max_bytes:
                    partial.discard()
                    raise too_large(url, offset + downloaded + len(chunk), max_bytes, f"{field}.maxBytes")
                handle.write(chunk)
                downloaded += len(chunk)
                bar.update(len(chunk))
    return downloaded


def fetch_small(  # noqa: PLR0917 - the request and its bounds
    client: httpx.Client, url: str, token: str | None, target: Path, max_bytes: int, field: str
) -> bool:
    """Write a small file (a config, a tokenizer) to ``target``, at most ``max_bytes``; False when the
    server says 404."""
    limit = f"the {max_bytes >> 20} MiB limit on a config file"
    with open_stream(client, url, token, {}) as response:
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise status_error(url, response.status_code, field)
        declared = _declared_total(response, 0)
        if declared is not None and declared > max_bytes:
            raise too_large(url, declared, max_bytes, limit)
        written = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as handle:
            for chunk in response.iter_bytes():
                written += len(chunk)
                if written > max_bytes:
                    raise too_large(url, written, max_bytes, limit)
                handle.write(chunk)
    return True
