"""Where the operator's API client gets its credentials: the pod's service account when it runs in
a cluster, else the kubeconfig; its connection pool is as large as its request threads."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.config import incluster_config, kube_config
from zthumb_operator.api import load_client_config

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: kubeconfig-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_outside_a_pod_the_kubeconfig_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    # The client reads $KUBECONFIG once, when imported.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api_client = load_client_config(workers=7)
    configuration = api_client.configuration
    assert configuration.host == "https://127.0.0.1:6443"
    assert configuration.auth_settings()["BearerToken"]["value"].lower() == "bearer kubeconfig-token"
    assert configuration.connection_pool_maxsize == 7


def test_in_a_pod_the_service_account_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("pod-token")
    (tmp_path / "ca.crt").write_text("not checked until a request is made")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "absent"))  # not read
    configuration = load_client_config(workers=3).configuration
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.auth_settings()["BearerToken"]["value"].lower() == "bearer pod-token"
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert configuration.connection_pool_maxsize == 3
