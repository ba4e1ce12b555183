"""``spec.training.tracking``: where the train step sends its params, metrics and adapter besides
its own TensorBoard log (always written, ``<run-dir>/logs/``). Only MLflow for now: a server of the
user's (``mlflow server``), reached over HTTP(S) from the train pod (rank 0 only).

The credentials never appear in the spec or the argv: ``credentialsSecretRef`` names a Secret whose
keys ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (basic auth) or
``MLFLOW_TRACKING_TOKEN`` (bearer) the train and eval Jobs get as env (``steps.tracking_secret_env``), each
optional, and which the MLflow client reads itself."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from zthumb_contract.spec_base import SECRET_NAME, SpecModel

TRACKING_URI_MAX_LENGTH = 2048
# MLflow's own bound on an experiment name is larger; 256 keeps it readable and the argv short.
EXPERIMENT_MAX_LENGTH = 256
# The keys the train and eval Jobs take from the credentials Secret, as the env names the MLflow client reads.
MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class MlflowCredentialsRef(SpecModel):
    """A Secret in the run's namespace holding some of ``MLFLOW_CREDENTIAL_KEYS``."""

    name: str = Field(pattern=SECRET_NAME, max_length=253)


class MlflowTrackingSpec(SpecModel):
    tracking_uri: str = Field(max_length=TRACKING_URI_MAX_LENGTH)
    experiment: str = Field("zthumb", min_length=1, max_length=EXPERIMENT_MAX_LENGTH)
    credentials_secret_ref: MlflowCredentialsRef | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _an_http_server(cls, uri: str) -> str:
        # Only a tracking server: a file: or sqlite: URI would write inside the pod (lost with it),
        # and databricks:/other schemes need credentials this spec does not carry.
        field = "training.tracking.mlflow.trackingUri"
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{field}: {uri[:100]!r} is not an http:// or https:// URL of an MLflow server")
        if parts.username or parts.password:
            raise ValueError(f"{field}: no credentials in the URL; put them in credentialsSecretRef's Secret")
        if any(char.isspace() or ord(char) < 0x20 for char in uri):
            raise ValueError(f"{field}: whitespace or control characters in the URL")
        return uri

    @field_validator("experiment")
    @classmethod
    def _a_printable_name(cls, name: str) -> str:
        if not name.strip() or any(ord(char) < 0x20 for char in name):
            raise ValueError("training.tracking.mlflow.experiment: a printable name, not blank")
        return name


class TrackingSpec(SpecModel):
    """Unset ``mlflow`` (the default): TensorBoard only."""

    mlflow: MlflowTrackingSpec | None = None
