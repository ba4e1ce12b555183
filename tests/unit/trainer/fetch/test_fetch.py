"""fetch-model against a real HTTP server on loopback serving the tiny single-file checkpoint."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from typer.testing import CliRunner
from zthumb_trainer.cli import app
from zthumb_trainer.fetch.verified import FetchError, download, fetch_config
from zthumb_trainer.local.http_serve import RangeRequestHandler, StaticServer


@pytest.fixture(scope="module")
def model_file(tiny_model):
    return tiny_model.single_file


@pytest.fixture(scope="module")
def model_sha(model_file):
    return hashlib.sha256(model_file.read_bytes()).hexdigest()


@pytest.fixture
def served(tiny_model):
    with StaticServer(tiny_model.root) as server:
        yield server


def partials(output: Path) -> list[Path]:
    return [p for p in output.parent.iterdir() if p.name.startswith(f"{output.name}.part")]


def _handler_class(status: int, seen: list[dict[str, str]] | None = None):
    class Fixed(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if seen is not None:
                seen.append(dict(self.headers))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Fixed


def test_download_verifies_and_then_skips(served, model_file, model_sha, tmp_path):
    target = tmp_path / "models" / "base.safetensors"
    first = download(f"{served.url}/{model_file.name}", model_sha, target, progress=False)
    assert not first.skipped
    assert first.downloaded_bytes == model_file.stat().st_size
    assert target.read_bytes() == model_file.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".verified"]
    second = download(f"{served.url}/{model_file.name}", model_sha, target, progress=False)
    assert second.skipped and second.downloaded_bytes == 0


def test_interrupted_transfer_resumes_with_a_range_request(tiny_model, model_file, model_sha, tmp_path):
    ranges: list[str | None] = []
    cut = {"remaining": 1}

    class Flaky(RangeRequestHandler):
        def send_head(self):
            ranges.append(self.headers.get("Range"))
            return super().send_head()

        def copyfile(self, source, outputfile):
            if cut["remaining"]:
                # Send half the body, then drop the connection, as a killed pod or network blip would.
                cut["remaining"] -= 1
                outputfile.write(source.read(model_file.stat().st_size // 2))
                return
            super().copyfile(source, outputfile)

    target = tmp_path / "base.safetensors"
    with StaticServer(tiny_model.root, handler=Flaky) as server:
        url = f"{server.url}/{model_file.name}"
        with pytest.raises(Exception):  # noqa: B017 - httpx's protocol error
            download(url, model_sha, target, progress=False)
        (partial,) = partials(target)  # this process's own: resumed at once
        half = model_file.stat().st_size // 2
        assert partial.stat().st_size == half
        result = download(url, model_sha, target, progress=False)
    assert ranges == [None, f"bytes={half}-"]
    assert result.downloaded_bytes == model_file.stat().st_size - half
    assert target.read_bytes() == model_file.read_bytes()


def test_wrong_hash_removes_the_temp_file_and_exits_non_zero(served, model_file, model_sha, tmp_path):
    target = tmp_path / "base.safetensors"
    wrong = "0" * 64
    result = CliRunner().invoke(
        app,
        ["fetch-model", "--url", f"{served.url}/{model_file.name}", "--sha256", wrong,
         "--output", str(target), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"expected: {wrong}" in result.output
    assert f"actual:   {model_sha}" in result.output
    assert not target.exists()
    assert not partials(target)


@pytest.mark.parametrize("status", [401, 403])
def test_denied_download_hints_at_gated_models(status, tmp_path):
    with StaticServer(tmp_path, handler=_handler_class(status)) as server, pytest.raises(FetchError) as error:
        download(f"{server.url}/model.safetensors", "0" * 64, tmp_path / "x", progress=False)
    message = str(error.value)
    assert f"HTTP {status}" in message
    assert "gated" in message and "licence" in message and "HF_TOKEN" in message


def test_not_found_is_reported_clearly(served, tmp_path):
    result = CliRunner().invoke(
        app,
        ["fetch-model", "--url", f"{served.url}/missing.safetensors", "--sha256", "0" * 64,
         "--output", str(tmp_path / "x"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "HTTP 404" in result.output and "not found" in result.output


def test_present_file_with_the_wrong_hash_is_refused(served, model_file, tmp_path):
    target = tmp_path / "base.safetensors"
    target.write_bytes(b"not a model")
    with pytest.raises(FetchError, match="does not match"):
        download(f"{served.url}/{model_file.name}", "0" * 64, target, progress=False)


def test_token_goes_only_to_the_original_host(tiny_model, model_file, model_sha, tmp_path, monkeypatch):
    """The Hub redirects to a CDN; the token must not follow (a different host: 127.0.0.2)."""
    cdn_seen: list[dict[str, str]] = []
    origin_seen: list[dict[str, str]] = []

    class Cdn(RangeRequestHandler):
        def send_head(self):
            cdn_seen.append(dict(self.headers))
            return super().send_head()

    cdn = StaticServer(tiny_model.root, handler=Cdn)
    cdn.httpd.server_close()
    from http.server import ThreadingHTTPServer

    cdn.httpd = ThreadingHTTPServer(
        ("127.0.0.2", 0), lambda *a, **k: Cdn(*a, directory=str(tiny_model.root), **k)
    )
    cdn.thread = threading.Thread(target=cdn.httpd.serve_forever, daemon=True)

    class Origin(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            origin_seen.append(dict(self.headers))
            self.send_response(302)
            self.send_header("Location", f"{cdn.url}/{model_file.name}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    monkeypatch.setenv("HF_TOKEN", "secret-token")
    with cdn, StaticServer(tmp_path, handler=Origin) as origin:
        runner = CliRunner()
        result = runner.invoke(
            app,
            ["fetch-model", "--url", f"{origin.url}/model", "--sha256", model_sha,
             "--output", str(tmp_path / "out.safetensors"), "--no-progress",
             "--allow-insecure-http"],  # loopback http: the token may travel in clear here
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert origin_seen[0].get("Authorization") == "Bearer secret-token"
    assert cdn_seen and all("Authorization" not in headers for headers in cdn_seen)


def test_config_files_are_fetched_once_and_load_the_single_file(served, tiny_model, model_file, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    config_dir = tmp_path / "config"
    assert fetch_config(f"{served.url}/diffusers/", config_dir) is True
    assert (config_dir / "unet" / "config.json").exists()
    assert (config_dir / "tokenizer_2" / "tokenizer_config.json").exists()
    assert not list(config_dir.rglob("*.safetensors"))
    assert fetch_config(f"{served.url}/diffusers/", config_dir) is False
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(model_file), config=str(config_dir), local_files_only=True
    )
    assert pipe.unet.config.addition_embed_type == "text_time"


def test_missing_config_file_names_it(served, tmp_path):
    with pytest.raises(FetchError, match=r"model_index\.json"):
        fetch_config(f"{served.url}/nowhere/", tmp_path / "config")
    assert not (tmp_path / "config").exists()


def test_cli_fetches_model_and_config(served, model_file, model_sha, tmp_path):
    result = CliRunner().invoke(
        app,
        ["fetch-model", "--url", f"{served.url}/{model_file.name}", "--sha256", model_sha,
         "--output", str(tmp_path / "m.safetensors"), "--config-url", f"{served.url}/diffusers/",
         "--config-dir", str(tmp_path / "cfg"), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Path(tmp_path / "cfg" / "model_index.json").exists()


def test_cli_names_the_url_when_the_server_cannot_be_reached(tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m.safetensors"
    result = CliRunner().invoke(
        app,
        ["fetch-model", "--url", url, "--sha256", "0" * 64, "--output", str(tmp_path / "m.safetensors"),
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"error: download of {url} failed:" in result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_verified_file_is_not_hashed_again_until_it_changes(
    served, model_file, model_sha, tmp_path, monkeypatch
):
    import os

    from zthumb_trainer.fetch import verified as fetch

    target = tmp_path / "base.safetensors"
    download(f"{served.url}/{model_file.name}", model_sha, target, progress=False)
    hashed: list[Path] = []
    real_sha256_of = fetch.sha256_of
    monkeypatch.setattr(fetch, "sha256_of", lambda path: hashed.append(path) or real_sha256_of(path))

    again = download(f"{served.url}/{model_file.name}", model_sha, target, progress=False)
    assert again.skipped and hashed == []  # the stamp written after the download vouches for it

    # Same size, new mtime (a rewrite): the stamp no longer vouches, the file is hashed again.
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with target.open("r+b") as handle:
        handle.seek(0)
        handle.write(b"\x00")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    with pytest.raises(FetchError, match="does not match"):
        download(f"{served.url}/{model_file.name}", model_sha, target, progress=False)
    assert hashed == [target]


@pytest.mark.parametrize(
    ("hf_token", "hub_token", "expected"),
    [("a", "b", "a"), ("", "b", "b"), ("  ", "b", "b"), (" a ", None, "a"), (None, None, None)],
)
def test_token_is_the_first_non_blank_of_the_token_envs(monkeypatch, hf_token, hub_token, expected):
    from zthumb_trainer.fetch.verified import token_from_env

    for name, value in (("HF_TOKEN", hf_token), ("HUGGINGFACE_HUB_TOKEN", hub_token)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert token_from_env() == expected


def _snapshot(paths: list[Path]) -> dict[str, object]:
    """What is at each path: a file's bytes, a folder's files and their bytes."""
    found: dict[str, object] = {}
    for path in paths:
        if path.is_dir():
            found[str(path)] = {
                str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()
            }
        else:
            found[str(path)] = path.read_bytes()
    return found


def test_fetch_model_never_touches_what_other_writers_are_writing(served, model_file, model_sha, tmp_path):
    """Files and folders beside the targets that other writers own (a live partial download under the
    name older versions used, another pod's staging folders) stay as they are."""
    output, config_dir = tmp_path / "m.safetensors", tmp_path / "cfg"
    foreign_partial = output.with_name(output.name + ".part")
    foreign_partial.write_bytes(b"another writer is appending here")
    foreign_staging = config_dir.with_name(config_dir.name + ".part")
    (foreign_staging / "unet").mkdir(parents=True)
    (foreign_staging / "unet" / "config.json").write_text("{}")
    other_pod = tmp_path / f".{config_dir.name}.part-pod-b-1234abcd-a1b2c3"
    other_pod.mkdir()
    (other_pod / "model_index.json").write_text("{}")
    before = _snapshot([foreign_partial, foreign_staging, other_pod])
    result = CliRunner().invoke(
        app,
        ["fetch-model", "--url", f"{served.url}/{model_file.name}", "--sha256", model_sha,
         "--output", str(output), "--config-url", f"{served.url}/diffusers/",
         "--config-dir", str(config_dir), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert output.read_bytes() == model_file.read_bytes() and (config_dir / ".complete").exists()
    assert _snapshot([foreign_partial, foreign_staging, other_pod]) == before


def test_a_config_folder_fetch_model_did_not_write_is_refused_not_replaced(served, tmp_path):
    config_dir = tmp_path / "cfg"
    (config_dir / "unet").mkdir(parents=True)
    (config_dir / "unet" / "config.json").write_text('{"mine": true}')
    before = _snapshot([config_dir])
    with pytest.raises(
        FetchError, match=r"spec\.baseModel\.configPath: .*cfg exists but fetch-model did not"
    ):
        fetch_config(f"{served.url}/diffusers/", config_dir)
    assert _snapshot([config_dir]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg"]  # no staging left either


def test_a_model_file_with_other_content_is_refused_not_replaced(served, model_file, model_sha, tmp_path):
    output = tmp_path / "m.safetensors"
    output.write_bytes(b"somebody's own file")
    result = CliRunner().invoke(
        app,
        ["fetch-model", "--url", f"{served.url}/{model_file.name}", "--sha256", model_sha,
         "--output", str(output), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1 and "spec.baseModel.sha256" in result.output
    assert output.read_bytes() == b"somebody's own file"
