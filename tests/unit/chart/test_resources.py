"""The chart's other objects: the API-key Secret (created or existing), the optional resources
(NetworkPolicy, PodDisruptionBudget, ServiceMonitor, ...), the `helm test` pod and NOTES.txt.

The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from chart_render import RESTRICTED_CONTAINER, needs_helm, render, render_notes


@needs_helm
def test_api_key_created_secret(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env, {"auth.apiKey": "s3cret", "tests.generate.enabled": "true"})
    secret = r.get("Secret", "zthumb-api-key")
    assert secret["data"] == {"api-key": "czNjcmV0"}
    ref = {"secretKeyRef": {"name": "zthumb-api-key", "key": "api-key"}}
    assert r.env["ZTHUMB_API_KEY"] == ref
    assert "checksum/api-key" in r.deployment["spec"]["template"]["metadata"]["annotations"]
    test_env = {
        e["name"]: e.get("value", e.get("valueFrom")) for e in r.get("Pod")["spec"]["containers"][0]["env"]
    }
    assert test_env["ZTHUMB_API_KEY"] == ref
    assert test_env["TEST_GENERATE"] == "true"
    assert json.loads(test_env["TEST_BODY"])["prompt"]
    assert "s3cret" not in json.dumps(r.deployment)


@needs_helm
def test_api_key_existing_secret(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env, {"auth.existingSecret": "zthumb-key", "auth.existingSecretKey": "token"})
    assert not r.has("Secret")
    assert r.env["ZTHUMB_API_KEY"] == {"secretKeyRef": {"name": "zthumb-key", "key": "token"}}


@needs_helm
def test_optional_resources(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(
        helm_env,
        {
            "metrics.serviceMonitor.enabled": "true",
            "metrics.serviceMonitor.labels.release": "prom",
            "networkPolicy.enabled": "true",
            "pdb.create": "false",
        },
        "--api-versions",
        "monitoring.coreos.com/v1",
    )
    sm = r.get("ServiceMonitor", "zthumb")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    np = r.get("NetworkPolicy", "zthumb")
    assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "zthumb"
    assert np["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert not r.has("PodDisruptionBudget")


@needs_helm
def test_helm_test_pod(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env)
    pod = r.get("Pod", "zthumb-test-connection")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # The Service selects name+instance: the test pod must not carry the name label.
    assert "app.kubernetes.io/name" not in pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    assert re.fullmatch(r"docker\.io/curlimages/curl:\d+\.\d+\.\d+", container["image"])
    assert RESTRICTED_CONTAINER.items() <= container["securityContext"].items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ZTHUMB_HOST"] == "zthumb.ml.svc"
    assert env["ZTHUMB_PORT"] == "8080"
    assert env["TEST_GENERATE"] == "false"
    assert "/readyz" in container["args"][0]
    r = render(helm_env, {"tests.image.repository": "mirror/curl", "tests.image.tag": "1.2.3"})
    assert r.get("Pod")["spec"]["containers"][0]["image"] == "docker.io/mirror/curl:1.2.3"


@needs_helm
def test_notes_print_in_cluster_curl(helm_bin: list[str], helm_env: dict[str, str], tmp_path: Path) -> None:
    notes = render_notes(helm_env, tmp_path)
    assert "curl -s http://zthumb.ml.svc:8080/generate" in notes
    assert "kubectl -n ml rollout status deployment/zthumb" in notes
    assert "helm upgrade` keeps whatever adapter the operator deployed" in notes
    assert "Authorization: Bearer $ZTHUMB_API_KEY" in notes  # the generated key
    notes = render_notes(helm_env, tmp_path, {"auth.enabled": "false", "lora.path": "z"})
    assert "Authorization" not in notes
    assert "resets it" in notes
