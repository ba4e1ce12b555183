"""A default install is not open: a generated API key in a Secret the server and the operator's eval
Job reference, a NetworkPolicy, NOTES that say how to get and send the key; `auth.enabled=false` is
the explicit, warned-about way to serve without one.

`helm template` cannot `lookup` the Secret of an earlier install, so here a key is generated on each
render; that an upgrade and a reinstall keep it is tests/e2e/test_chart.py's to show.
The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from chart_render import needs_helm, render, render_fails, render_notes
from zthumb_contract.spec_base import SecretKeyRef
from zthumb_operator.serverkey import server_key_ref

REF = {"secretKeyRef": {"name": "zthumb-api-key", "key": "api-key"}}


def generated_key(helm_env: dict[str, str], values: dict[str, str] | None = None) -> str:
    secret = render(helm_env, values).get("Secret", "zthumb-api-key")
    return base64.b64decode(secret["data"]["api-key"]).decode()


@needs_helm
def test_the_default_install_generates_a_key_into_a_kept_secret(
    helm_bin: list[str], helm_env: dict[str, str]
) -> None:
    r = render(helm_env)
    secret = r.get("Secret", "zthumb-api-key")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert secret["type"] == "Opaque" and list(secret["data"]) == ["api-key"]
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", key), key
    assert key != generated_key(helm_env)  # random, not a constant every install shares
    assert r.env["ZTHUMB_API_KEY"] == REF
    assert key not in str(r.deployment)  # only the Secret holds it
    # No checksum annotation: the generated key does not change, so it must not roll the pods.
    assert "checksum/api-key" not in r.deployment["spec"]["template"]["metadata"]["annotations"]


@needs_helm
def test_the_operator_finds_the_key_the_chart_renders(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    # The operator reads this very Deployment to give its eval Job the same Secret reference.
    for values, ref in [
        ({}, SecretKeyRef(name="zthumb-api-key", key="api-key")),
        ({"auth.apiKey": "s3cret"}, SecretKeyRef(name="zthumb-api-key", key="api-key")),
        (
            {"auth.existingSecret": "mine", "auth.existingSecretKey": "token"},
            SecretKeyRef(name="mine", key="token"),
        ),
        ({"auth.enabled": "false"}, None),
    ]:
        assert server_key_ref(render(helm_env, values).deployment, "zthumb") == ref, values


@needs_helm
def test_auth_enabled_false_serves_without_a_key(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env, {"auth.enabled": "false", "tests.generate.enabled": "true"})
    assert not r.has("Secret")
    assert "ZTHUMB_API_KEY" not in r.env
    test_env = {e["name"] for e in r.get("Pod")["spec"]["containers"][0]["env"]}
    assert "ZTHUMB_API_KEY" not in test_env


@needs_helm
def test_auth_enabled_false_with_a_key_is_refused(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    for values in (
        {"auth.enabled": "false", "auth.apiKey": "k"},
        {"auth.enabled": "false", "auth.existingSecret": "s"},
    ):
        stderr = render_fails(helm_env, values)
        assert (
            "auth.enabled=false serves without an API key, but auth.apiKey or auth.existingSecret" in stderr
        )


@needs_helm
def test_notes_show_how_to_get_the_key_and_send_it(
    helm_bin: list[str], helm_env: dict[str, str], tmp_path: Path
) -> None:
    notes = render_notes(helm_env, tmp_path)
    assert (
        "export ZTHUMB_API_KEY=$(kubectl -n ml get secret zthumb-api-key "
        "-o jsonpath='{.data.api-key}' | base64 -d)"
    ) in notes
    assert "generated at the first install" in notes
    assert notes.count('-H "Authorization: Bearer $ZTHUMB_API_KEY"') == 2  # in-cluster and port-forward
    assert "WARNING" not in notes
    assert "NetworkPolicy/zthumb admits to port http only the pods of namespace ml" in notes

    notes = render_notes(
        helm_env, tmp_path, {"auth.existingSecret": "mine", "auth.existingSecretKey": "my.key"}
    )
    assert "get secret mine -o jsonpath='{.data.my\\.key}'" in notes
    assert "generated" not in notes

    notes = render_notes(helm_env, tmp_path, {"auth.enabled": "false", "networkPolicy.enabled": "false"})
    assert "WARNING: auth.enabled=false: the server has no API key" in notes
    assert "Authorization" not in notes and "get secret" not in notes
    assert "NetworkPolicy" not in notes


@needs_helm
def test_the_default_network_policy_admits_the_release_namespace(
    helm_bin: list[str], helm_env: dict[str, str]
) -> None:
    np = render(helm_env).get("NetworkPolicy", "zthumb")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "zthumb",
        "app.kubernetes.io/instance": "zthumb",
    }
    # Every pod of the namespace (the operator's eval Jobs, the helm test pod), on port http only.
    (rule,) = np["spec"]["ingress"]
    assert rule == {"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"podSelector": {}}]}
    assert not render(helm_env, {"networkPolicy.enabled": "false"}).has("NetworkPolicy")
