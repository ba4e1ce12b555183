"""Operator configuration: environment variables ``ZTHUMB_OPERATOR_*``, read once at startup.

A bad value stops the operator before it touches the cluster, with one line per
problem naming the variable (``load_config``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "ZTHUMB_OPERATOR_"
# In a list setting: anything is allowed.
ANY = "*"
# The project's trainer image, by tag or by digest.
PROJECT_TRAINER_IMAGES = ("ghcr.io/zthumb/trainer:", "ghcr.io/zthumb/trainer@")
# The label the chart puts on the server's Deployment (its default name).
SERVER_DEPLOYMENT_SELECTOR = {"app.kubernetes.io/name": "zthumb"}


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class ConfigError(RuntimeError):
    """The operator's environment is unusable; the message says which variable and why."""


class OperatorConfig(BaseSettings):
    """Everything the operator reads from its environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Comma-separated namespaces to watch; empty means cluster-wide.
    namespaces: Annotated[tuple[str, ...], NoDecode] = ()
    # Image of the step Jobs when a LoRAFinetune leaves spec.images.trainer unset.
    trainer_image: str = "ghcr.io/zthumb/trainer:0.1.0"
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
    # TEST HOOK: JSON object used as the eval summary (read through EvalSummary, as a real eval
    # pod's message) when the eval pod terminated without a termination message (kwok-simulated
    # pods). Never set in production.
    simulated_eval_summary: dict[str, Any] | None = None
    # Worker threads for Kubernetes API calls.
    api_workers: int = Field(default=16, ge=1, le=256)
    # Log level of the operator and kopf.
    log_level: str = "INFO"

    # What a run may use (admission.py; the ValidatingAdmissionPolicy in manifests/operator/admission/
    # says the same at apply time). Lists are comma-separated: "*" allows anything, empty nothing.
    # Prefixes spec.images.trainer must start with; empty: a run may not choose its image at all.
    allowed_trainer_images: Annotated[tuple[str, ...], NoDecode] = PROJECT_TRAINER_IMAGES
    # Only Secrets labelled zthumb.io/allow-runs=true may be named by a run's *SecretRef fields.
    require_secret_label: bool = True
    # Labels (key=value, comma-separated) the Deployment a run rolls out must carry; empty: any.
    deployment_selector: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict(SERVER_DEPLOYMENT_SELECTOR)
    )
    # Keys spec.resources.nodeSelector and spec.resources.tolerations may use.
    allowed_node_selector_keys: Annotated[tuple[str, ...], NoDecode] = (ANY,)
    allowed_toleration_keys: Annotated[tuple[str, ...], NoDecode] = ("nvidia.com/gpu",)

    @field_validator(
        "namespaces",
        "allowed_trainer_images",
        "allowed_node_selector_keys",
        "allowed_toleration_keys",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("allowed_trainer_images")
    @classmethod
    def _check_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            # "ghcr.io/zthumb" would also allow "ghcr.io/zthumb-evil/...".
            if prefix != ANY and not prefix.endswith(("/", ":", "@")):
                raise ValueError(
                    f"{prefix!r} must end with '/', ':' or '@' (a registry or repository, a tag or a "
                    f"digest), or be {ANY!r}"
                )
        return value

    @field_validator("deployment_selector", mode="before")
    @classmethod
    def _parse_selector(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        selector = {}
        for part in _split(value):
            key, sep, label = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{part!r} is not key=value")
            selector[key.strip()] = label.strip()
        return selector

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
            field = str(err["loc"][0])  # every field is one variable (no model-wide rules)
            lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
        raise ConfigError("invalid operator configuration:\n  " + "\n  ".join(lines)) from None
