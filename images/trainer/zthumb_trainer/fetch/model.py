"""The fetch-model step: the base checkpoint (resumable, SHA256-verified, at most
``spec.baseModel.maxBytes``) and, for a single file, its diffusers config files.

``zthumb-train fetch-model`` parses the options and prints the outcome; this is the work. Every
failure is a ``FetchError`` whose message says what to fix."""

from __future__ import annotations

from pathlib import Path

import httpx
from zthumb_contract.spec import BaseModelSpec

from zthumb_trainer.download import FetchError
from zthumb_trainer.fetch.verified import FetchResult, download, fetch_config, token_from_env


def fetch_base_model(
    url: str, sha256: str, output: Path, *, base_model: BaseModelSpec, config_url: str | None = None,
    config_dir: Path | None = None, progress: bool = True,
) -> FetchResult:  # fmt: skip
    """Download ``url`` to ``output`` unless it is there with ``sha256``, then the config files
    under ``config_url`` into ``config_dir`` when both are given."""
    token = token_from_env()
    insecure = base_model.allow_insecure_http
    try:
        result = download(url, sha256, output, token=token, progress=progress, max_bytes=base_model.max_bytes,
                          allow_insecure_http=insecure)  # fmt: skip
        if config_url and config_dir:
            fetch_config(config_url, config_dir, token=token, allow_insecure_http=insecure)
    except FetchError:
        raise
    except (OSError, httpx.HTTPError) as error:
        raise FetchError(f"download of {url} failed: {error}") from error
    return result
