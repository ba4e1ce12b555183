"""Everything the trainer reads from its environment, in one place (read when a command needs it).

The step definitions pass the options as flags; the environment carries only what the
Job's pod or the developer's shell provides: the downward-API run name and namespace
(progress reporting), the termination log, tokens, and test hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from zthumb_contract import env

# Hugging Face token variables, in the order they are tried (the first non-empty wins).
TOKEN_ENVS = ("HF_TOKEN", "HUGGINGFACE_HUB_TOKEN")


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZTHUMB_", extra="ignore")

    # The LoRAFinetune to report progress into (set by the operator from the downward API).
    run_name: str | None = Field(None, validation_alias=env.RUN_NAME)
    namespace: str | None = Field(None, validation_alias=env.NAMESPACE)
    # Where Kubernetes picks up the termination message (the eval summary for the operator).
    termination_log: Path = Path("/dev/termination-log")
    # Tokens for gated downloads (see ``hf_token``).
    hf_token_env: str | None = Field(None, validation_alias=TOKEN_ENVS[0])
    huggingface_hub_token: str | None = Field(None, validation_alias=TOKEN_ENVS[1])
    # The server's bearer token, for eval (the operator fills it from the server's own Secret).
    api_key: str | None = Field(None, validation_alias=env.API_KEY)
    # Overrides eval's --ready-timeout (seconds to wait for the server's /readyz).
    eval_ready_timeout: float | None = None
    # TEST HOOK: stop training right after this step, as if the pod had been killed.
    train_stop_after_step: int | None = None

    @field_validator(
        "run_name", "namespace", "hf_token_env", "huggingface_hub_token", "api_key", mode="before"
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @property
    def hf_token(self) -> str | None:
        """The first of ``TOKEN_ENVS`` that is set and not blank."""
        return self.hf_token_env or self.huggingface_hub_token
