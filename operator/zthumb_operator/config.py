"""Operator configuration: environment variables ``ZTHUMB_OPERATOR_*``, read once at startup.

A bad value stops the operator before it touches the cluster, with one line per
problem naming the variable (``load_config``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "ZTHUMB_OPERATOR_"


class ConfigError(RuntimeError):
    """The operator's environment is unusable; the message says which variable and why."""


class OperatorConfig(BaseSettings):
    """Everything the operator reads from its environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Comma-separated namespaces to watch; empty means cluster-wide.
    namespaces: Annotated[tuple[str, ...], NoDecode] = ()
    # Image of the step Jobs when a LoRAFinetune leaves spec.images.trainer unset.
    trainer_image: str = "ghcr.io/zthumb/trainer:0.1.0"
    # ServiceAccount of the step pods (the train pod patches lorafinetunes/status with it).
    trainer_service_account: str = "zthumb-trainer"
    # UID/GID of the step containers: the trainer image's user, and the chart's (both 10001), so the
    # server can read what the Jobs write on the shared volume.
    run_as_user: int = Field(default=10001, ge=1)
    fs_group: int = Field(default=10001, ge=0)
    # How long a step pod may stay unschedulable before the run fails (reason Unschedulable).
    unschedulable_deadline_seconds: int = Field(default=1800, ge=1)
    # Job.spec.ttlSecondsAfterFinished (finished Jobs are garbage-collected after it).
    job_ttl_seconds: int = Field(default=86400, ge=0)
    # Job.spec.activeDeadlineSeconds of every step Job.
    active_deadline_seconds: int = Field(default=172800, ge=1)
    # Job.spec.backoffLimit (train resumes from its newest checkpoint on a retry).
    backoff_limit: int = Field(default=2, ge=0)
    # How often to look at a rollout in progress.
    rollout_poll_seconds: float = Field(default=1.0, gt=0)
    # Safety-net resync of every active run, in seconds (events do the prompt work).
    resync_seconds: float = Field(default=30.0, gt=0)
    # Prometheus metrics port (0 disables the endpoint).
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    # kopf liveness endpoint; empty disables it.
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    # Where the eval Job reaches the server when spec.deploy.serviceURL is unset.
    eval_server_url_template: str = "http://{deployment}.{namespace}.svc:8080"
    # Mount path of the server's volume, for Z_LORA_PATH (the chart mounts the PVC at /data).
    server_data_root: str = "/data"
    # TEST HOOK: JSON object used as the eval summary when the eval pod terminated without
    # a termination message (kwok-simulated pods). Never set in production.
    simulated_eval_summary: dict[str, float] | None = None
    # Worker threads for Kubernetes API calls.
    api_workers: int = Field(default=16, ge=1, le=256)
    # Log level of the operator and kopf.
    log_level: str = "INFO"

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("eval_server_url_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        try:
            value.format(deployment="d", namespace="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{deployment}} and {{namespace}} may be used: {exc}") from exc
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def load_config() -> OperatorConfig:
    """Read the configuration once; raise ``ConfigError`` naming every bad variable."""
    try:
        return OperatorConfig()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("invalid operator configuration:\n  " + "\n  ".join(lines)) from None
