"""Downloads from hostile or odd servers on loopback: bounded bytes and memory (measured in a process
of its own), tokens kept to their origin, and partial files claimed by one writer at a time."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
from zthumb_trainer import download as download_module
from zthumb_trainer.download import ClaimLostError, claim_partial, origin
from zthumb_trainer.fetch.verified import FetchError, download, fetch_config
from zthumb_trainer.local.http_serve import RangeRequestHandler, StaticServer

MiB = 2**20
SERVED_AT_MOST = 1024 * MiB  # what the endless server sends before giving up on a client that reads on
PEAK_EXTRA_KIB = 100 * 1024


class Endless(BaseHTTPRequestHandler):
    """Streams zeros with no Content-Length (or a false one in ``declared``) until the client stops
    reading or ``SERVED_AT_MOST`` bytes went out."""

    declared: str | None = None
    seen: ClassVar[list[dict[str, str]]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append(dict(self.headers))
        self.send_response(200)
        if self.declared is not None:
            self.send_header("Content-Length", self.declared)
        self.end_headers()
        block = bytes(MiB)
        try:
            for _ in range(SERVED_AT_MOST // MiB):
                self.wfile.write(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def endless(declared: str | None = None) -> type[Endless]:
    return type("EndlessServer", (Endless,), {"declared": declared, "seen": []})


# One download in a process of its own: its memory high-water mark before and after, in KiB, and
# the error it ended with.
MEASURE = """
import json, resource, sys
from pathlib import Path
from zthumb_trainer.fetch.verified import FetchError, download, fetch_config
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kind, url, target = sys.argv[1:]
try:
    if kind == "model":
        download(url, "0" * 64, Path(target), progress=False, max_bytes=8 * 2**20)
    else:
        fetch_config(url, Path(target))
    outcome = "done"
except FetchError as error:
    outcome = str(error)
print(json.dumps([before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, outcome]))
"""


def download_peak(kind: str, url: str, target: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, kind, url, str(target)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before, after, outcome = json.loads(done.stdout.splitlines()[-1])
    return after - before, outcome


def test_a_server_that_never_stops_is_cut_at_max_bytes(tmp_path):
    target = tmp_path / "models" / "base.safetensors"
    with StaticServer(tmp_path, handler=endless()) as server:
        extra_kib, outcome = download_peak("model", f"{server.url}/model", target)
    assert "spec.baseModel.maxBytes" in outcome and str(8 * MiB) in outcome
    assert extra_kib < PEAK_EXTRA_KIB
    assert list(target.parent.iterdir()) == []  # the writer's own partial, removed


def test_a_config_file_that_never_ends_is_cut_with_bounded_memory(tmp_path):
    with StaticServer(tmp_path, handler=endless()) as server:
        extra_kib, outcome = download_peak("config", f"{server.url}/repo/", tmp_path / "config")
    assert "config file" in outcome and "model_index.json" in outcome
    assert extra_kib < PEAK_EXTRA_KIB, f"{extra_kib // 1024} MiB more while fetching"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".config", "config"))]


def test_a_declared_size_over_the_limit_is_refused_before_a_byte_is_written(tmp_path):
    target = tmp_path / "base.safetensors"
    refused = pytest.raises(FetchError, match=r"spec\.baseModel\.maxBytes \(21474836480 > 1048576")
    with StaticServer(tmp_path, handler=endless(declared=str(20 * 2**30))) as server, refused:
        download(f"{server.url}/model", "0" * 64, target, progress=False, max_bytes=MiB)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_body_longer_than_its_content_length_is_read_no_further(tmp_path):
    target = tmp_path / "base.safetensors"
    with (
        StaticServer(tmp_path, handler=endless(declared="1000")) as server,
        pytest.raises(FetchError, match="sha256"),
    ):
        download(f"{server.url}/model", "0" * 64, target, progress=False, max_bytes=MiB)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_resumed_download_whose_whole_size_is_over_the_limit_is_refused(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "big.bin").write_bytes(os.urandom(2 * MiB))
    target = tmp_path / "out" / "big.bin"
    target.parent.mkdir()
    own = claim_partial(target).path  # this process's own partial: resumed at once
    own.write_bytes(b"x" * 100)
    with StaticServer(served) as server, pytest.raises(FetchError, match=r"maxBytes \(2097152 > 1048576"):
        download(f"{server.url}/big.bin", "0" * 64, target, progress=False, max_bytes=MiB)


# --- tokens ---------------------------------------------------------------------------------------


def test_origins_compare_scheme_host_and_port():
    assert origin("https://hf.co/a") == origin("https://hf.co:443/b") == ("https", "hf.co", 443)
    assert origin("http://hf.co/a") != origin("https://hf.co/a")
    assert origin("http://127.0.0.1:8000/a") != origin("http://127.0.0.1:8001/a")


def test_a_token_does_not_follow_a_redirect_to_another_port_of_the_same_host(tmp_path):
    (tmp_path / "model").write_bytes(b"weights")
    sha256 = hashlib.sha256(b"weights").hexdigest()
    target_seen: list[dict[str, str]] = []

    class Recording(RangeRequestHandler):
        def send_head(self):
            target_seen.append(dict(self.headers))
            return super().send_head()

    with StaticServer(tmp_path, handler=Recording) as other_port:

        class Redirect(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(302)
                self.send_header("Location", f"{other_port.url}/model")
                self.send_header("Content-Length", "0")
                self.end_headers()

        with StaticServer(tmp_path, handler=Redirect) as first:
            download(f"{first.url}/model", sha256, tmp_path / "out" / "m", token="secret", progress=False,
                     allow_insecure_http=True)  # fmt: skip
    assert target_seen and all("Authorization" not in headers for headers in target_seen)


def test_a_token_over_plain_http_is_refused_unless_allowed(tmp_path):
    # Refused before any request is made, so a host that does not exist is enough.
    remote = "http://models.invalid"
    with pytest.raises(FetchError, match=r"spec\.baseModel\.allowInsecureHttp"):
        download(f"{remote}/m", "0" * 64, tmp_path / "m", token="secret", progress=False)
    with pytest.raises(FetchError, match=r"spec\.eval\.clip\.allowInsecureHttp"):
        fetch_config(f"{remote}/repo/", tmp_path / "c", "secret", field="spec.eval.clip")
    assert not (tmp_path / "c").exists()


def test_a_token_over_loopback_http_is_sent_with_or_without_the_flag(tmp_path):
    # Loopback traffic never leaves the machine (or the pod): the local runner's tiny model is
    # served that way to developers whose shell may hold a real HF_TOKEN.
    handler = endless(declared="0")
    with StaticServer(tmp_path, handler=handler) as server:
        assert server.url.startswith("http://127.0.0.1")
        with pytest.raises(FetchError, match="sha256 mismatch"):
            download(f"{server.url}/m", "0" * 64, tmp_path / "m", token="secret", progress=False)
        with pytest.raises(FetchError, match="sha256 mismatch"):
            download(f"{server.url}/m", "0" * 64, tmp_path / "m2", token="secret", progress=False,
                     allow_insecure_http=True)  # fmt: skip
    assert [seen["Authorization"] for seen in handler.seen] == ["Bearer secret"] * 2


# --- claims on partial downloads ------------------------------------------------------------------


def _served(tmp_path: Path, size: int = 3 * MiB) -> tuple[Path, bytes, str]:
    served = tmp_path / "served"
    served.mkdir()
    data = os.urandom(size)
    (served / "model.bin").write_bytes(data)
    return served, data, hashlib.sha256(data).hexdigest()


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_an_abandoned_partial_is_adopted_and_resumed_and_a_live_one_left_alone(tmp_path):
    served, data, sha256 = _served(tmp_path)
    target = tmp_path / "out" / "model.bin"
    target.parent.mkdir()
    abandoned = target.with_name(f"{target.name}.part-dead-pod-1234abcd")
    abandoned.write_bytes(data[:MiB])
    _age(abandoned, download_module.ABANDONED_SECONDS + 60)
    older = target.with_name(f"{target.name}.part-dead-pod-9999abcd")  # a second one, shorter
    older.write_bytes(data[:100])
    _age(older, download_module.ABANDONED_SECONDS + 60)
    live = target.with_name(f"{target.name}.part-live-pod-5678abcd")
    live.write_bytes(b"another writer's bytes")
    ranges: list[str | None] = []

    class Recording(RangeRequestHandler):
        def send_head(self):
            ranges.append(self.headers.get("Range"))
            return super().send_head()

    with StaticServer(served, handler=Recording) as server:
        result = download(f"{server.url}/model.bin", sha256, target, progress=False)
    assert ranges == [f"bytes={MiB}-"] and result.downloaded_bytes == len(data) - MiB
    assert target.read_bytes() == data
    assert live.read_bytes() == b"another writer's bytes"  # a live writer's file: untouched
    assert not abandoned.exists() and not older.exists()  # adopted; removed once the model was published
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(
        [target.name, f"{target.name}.verified", live.name]
    )


def test_a_recently_stopped_writers_partial_is_watched_until_it_is_abandoned(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "LIVE_SECONDS", 0.2)
    monkeypatch.setattr(download_module, "ABANDONED_SECONDS", 1.0)
    monkeypatch.setattr(download_module, "WATCH_SECONDS", 0.05)
    target = tmp_path / "model.bin"
    stopped = target.with_name(f"{target.name}.part-restarted-pod-aaaa")
    stopped.write_bytes(b"half")
    _age(stopped, 0.5)  # neither live nor abandoned yet: a pod restarted right after a kill
    with claim_partial(target) as partial:
        assert partial.path.read_bytes() == b"half"  # adopted once it was clearly abandoned
    assert not stopped.exists()


def test_a_writer_whose_partial_was_taken_over_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "HEARTBEAT_SECONDS", 0.02)
    target = tmp_path / "model.bin"
    with claim_partial(target) as partial:
        partial.path.rename(target.with_name(f"{target.name}.part-adopter-bbbb"))  # what an adopter does
        deadline = time.monotonic() + 30
        with pytest.raises(ClaimLostError):  # the heartbeat notices within a few beats
            while time.monotonic() < deadline:
                partial.check()
                time.sleep(0.02)
