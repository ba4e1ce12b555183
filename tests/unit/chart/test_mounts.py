"""The server's mounts of the data volume: read-only, with the inductor cache as the one writable
directory (and only while compiling); the body bound passed to the server.

The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

from typing import Any

import pytest
from chart_render import needs_helm, render, render_fails


def data_mounts(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in container["volumeMounts"] if m["name"] == "data"]


@needs_helm
def test_the_server_mounts_the_volume_read_only(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env)
    assert data_mounts(r.server) == [{"name": "data", "mountPath": "/data", "readOnly": True}]
    # Everything the server reads lies under that mount.
    for name in ("ZTHUMB_MODEL_PATH", "ZTHUMB_LORA_ROOT", "ZTHUMB_REPORTS_DIR"):
        assert r.env[name].startswith("/data/"), name
    # The init container provisions the model: it writes, the server does not.
    (init,) = r.pod["initContainers"]
    assert data_mounts(init) == [{"name": "data", "mountPath": "/data"}]


@needs_helm
@pytest.mark.parametrize(
    ("values", "cache_dir", "sub_path"),
    [
        ({}, "/data/models/.cache/torchinductor", "models/.cache/torchinductor"),
        (
            {"persistence.subPath": "zthumb"},
            "/data/models/.cache/torchinductor",
            "zthumb/models/.cache/torchinductor",
        ),
        (
            {"persistence.mountPath": "/srv", "compile.cacheDir": "/srv/inductor"},
            "/srv/inductor",
            "inductor",
        ),
    ],
    ids=["default", "volume-sub-path", "absolute-cache-dir"],
)
def test_only_the_inductor_cache_is_writable_while_compiling(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], cache_dir: str, sub_path: str
) -> None:
    r = render(helm_env, {"compile.mode": "default", **values})
    read_only, cache = data_mounts(r.server)
    assert read_only["readOnly"] is True
    assert cache == {"name": "data", "mountPath": cache_dir, "subPath": sub_path}
    assert r.env["ZTHUMB_COMPILE_CACHE_DIR"] == cache_dir
    writable = [m for m in r.server["volumeMounts"] if not m.get("readOnly")]
    assert {m["mountPath"] for m in writable} == {cache_dir, "/tmp", "/cache"}  # the last two: emptyDirs


@needs_helm
@pytest.mark.parametrize("cache_dir", ["/var/cache/inductor", "/data", "/database/cache"])
def test_an_inductor_cache_off_the_volume_is_refused(
    helm_bin: list[str], helm_env: dict[str, str], cache_dir: str
) -> None:
    stderr = render_fails(helm_env, {"compile.mode": "default", "compile.cacheDir": cache_dir})
    assert f"compile.cacheDir={cache_dir} is outside persistence.mountPath=/data" in stderr, stderr


@needs_helm
def test_the_body_bound_reaches_the_server(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    from zthumb.settings import Settings

    assert render(helm_env).env["ZTHUMB_MAX_BODY_BYTES"] == str(Settings().max_body_bytes)
    assert render(helm_env, {"server.maxBodyBytes": "65536"}).env["ZTHUMB_MAX_BODY_BYTES"] == "65536"
    assert "maxBodyBytes" in render_fails(helm_env, {"server.maxBodyBytes": "0"})


@needs_helm
def test_the_batching_knobs_reach_the_server_with_its_defaults(
    helm_bin: list[str], helm_env: dict[str, str]
) -> None:
    from zthumb.settings import Settings

    env = render(helm_env).env
    assert int(env["ZTHUMB_MAX_BATCH"]) == Settings().max_batch
    assert float(env["ZTHUMB_BATCH_WAIT_MS"]) == Settings().batch_wait_ms
    env = render(helm_env, {"server.maxBatch": "1", "server.batchWaitMs": "0"}).env
    assert (env["ZTHUMB_MAX_BATCH"], env["ZTHUMB_BATCH_WAIT_MS"]) == ("1", "0")
    assert "maxBatch" in render_fails(helm_env, {"server.maxBatch": "0"})


@needs_helm
def test_the_prompt_cache_bounds_reach_the_server_with_its_defaults(
    helm_bin: list[str], helm_env: dict[str, str]
) -> None:
    from zthumb.settings import Settings

    env = render(helm_env).env
    assert int(env["ZTHUMB_PROMPT_CACHE_ENTRIES"]) == Settings().prompt_cache_entries
    assert int(env["ZTHUMB_PROMPT_CACHE_MB"]) == Settings().prompt_cache_mb
    env = render(helm_env, {"server.promptCacheEntries": "1", "server.promptCacheMb": "0"}).env
    assert (env["ZTHUMB_PROMPT_CACHE_ENTRIES"], env["ZTHUMB_PROMPT_CACHE_MB"]) == ("1", "0")
    assert Settings(prompt_cache_entries=1, prompt_cache_mb=0).prompt_cache_mb == 0
    assert "promptCacheEntries" in render_fails(helm_env, {"server.promptCacheEntries": "0"})
    assert "promptCacheMb" in render_fails(helm_env, {"server.promptCacheMb": "-1"})
