"""The operator chart (charts/zthumb-operator) rendered by helm: RBAC cluster-wide or per watched
namespace, one set of run-policy lists for the operator and the admission policy, the metrics
Service the `helm test` pod reaches, and the combinations of values it refuses, naming the value."""

from __future__ import annotations

import ast
from typing import Any

import pytest
from chart_render import OPERATOR_CHART, REPO, Rendered, helm, needs_helm, set_args
from zthumb_operator.config import OperatorConfig

pytestmark = needs_helm
NAMESPACE = "zthumb-system"


def render_operator(helm_env: dict[str, str], values: dict[str, str] | None = None, *extra: str) -> Rendered:
    proc = helm(
        helm_env, "template", "zthumb-operator", str(OPERATOR_CHART), "--namespace", NAMESPACE,
        "--kube-version", "1.36.3", *set_args(values), *extra,
    )  # fmt: skip
    return Rendered(proc.stdout)


def env_of(rendered: Rendered) -> dict[str, str]:
    (container,) = rendered.pod["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def policy_lists(rendered: Rendered) -> dict[str, list[str]]:
    variables = rendered.get("ValidatingAdmissionPolicy")["spec"]["variables"]
    return {
        v["name"]: list(ast.literal_eval(v["expression"]))
        for v in variables
        if v["name"].startswith("allowed")
    }


def test_the_crd_in_the_chart_is_the_repositorys_crd_byte_for_byte() -> None:
    # Helm packages a chart's crds/ only from inside the chart, and not through a symlink.
    name = "lorafinetunes.zthumb.io.yaml"
    assert (OPERATOR_CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
        "charts/zthumb-operator/crds/ is not crds/: run `make manifests`"
    )
    assert sorted(p.name for p in (OPERATOR_CHART / "crds").iterdir()) == [name]


def test_defaults_are_cluster_wide(helm_env) -> None:
    rendered = render_operator(helm_env)
    assert rendered.get("ClusterRole", "zthumb-operator")["rules"]
    binding = rendered.get("ClusterRoleBinding", "zthumb-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "zthumb-operator", "namespace": NAMESPACE}
    ]
    assert not rendered.has("Role") and not rendered.has("RoleBinding")
    assert env_of(rendered)["ZTHUMB_OPERATOR_NAMESPACES"] == ""
    assert "matchResources" not in rendered.get("ValidatingAdmissionPolicyBinding")["spec"]
    assert rendered.deployment["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "zthumb-operator"}
    }


def test_watch_namespaces_grants_a_role_in_each_and_nothing_cluster_wide(helm_env) -> None:
    rendered = render_operator(helm_env, {"watchNamespaces": "{ml,team-b}"})
    assert not rendered.has("ClusterRole") and not rendered.has("ClusterRoleBinding")
    roles = [d for d in rendered.docs if d["kind"] == "Role"]
    bindings = [d for d in rendered.docs if d["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "team-b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == NAMESPACE
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "zthumb-operator",
        }
    # A Role cannot grant a cluster-scoped resource: the ClusterQueue read needs rbac.clusterQueues.
    assert all("clusterqueues" not in rule["resources"] for role in roles for rule in role["rules"])
    assert env_of(rendered)["ZTHUMB_OPERATOR_NAMESPACES"] == "ml,team-b"
    selector = rendered.get("ValidatingAdmissionPolicyBinding")["spec"]["matchResources"]["namespaceSelector"]
    assert selector["matchExpressions"][0]["values"] == ["ml", "team-b"]
    with_queues = render_operator(helm_env, {"watchNamespaces": "{ml}", "rbac.clusterQueues": "true"})
    assert with_queues.get("ClusterRole", "zthumb-operator-clusterqueues")["rules"] == [
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues"], "verbs": ["get"]}
    ]


def test_the_cluster_role_and_each_role_grant_the_same_apart_from_cluster_queues(helm_env) -> None:
    def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        return {
            (g, r, v)
            for rule in rules
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }

    cluster = grants(render_operator(helm_env).get("ClusterRole")["rules"])
    namespaced = grants(render_operator(helm_env, {"watchNamespaces": "{ml}"}).get("Role")["rules"])
    assert cluster - namespaced == {("kueue.x-k8s.io", "clusterqueues", "get")}
    assert namespaced <= cluster


def test_the_operator_and_the_admission_policy_get_the_same_run_policy(
    helm_env, tmp_path, monkeypatch
) -> None:
    values = tmp_path / "policy.yaml"
    values.write_text(
        "runPolicy:\n"
        "  allowedTrainerImages: ['registry.example/ml/', 'ghcr.io/zthumb/trainer@']\n"
        "  allowedNodeSelectorKeys: []\n"
        "  allowedTolerationKeys: ['*']\n"
        "  requireSecretLabel: false\n"
        "  deploymentSelector: {app.kubernetes.io/name: thumbs, tier: gpu}\n"
    )
    rendered = render_operator(helm_env, None, "-f", str(values))
    for name, value in env_of(rendered).items():  # read as the operator reads its environment
        monkeypatch.setenv(name, value)
    config = OperatorConfig()
    assert config.allowed_trainer_images == ("registry.example/ml/", "ghcr.io/zthumb/trainer@")
    assert config.allowed_node_selector_keys == ()
    assert config.allowed_toleration_keys == ("*",)
    assert config.require_secret_label is False
    assert config.deployment_selector == {"app.kubernetes.io/name": "thumbs", "tier": "gpu"}
    assert policy_lists(rendered) == {
        "allowedTrainerImagePrefixes": list(config.allowed_trainer_images),
        "allowedNodeSelectorKeys": [],
        "allowedTolerationKeys": ["*"],
    }


def test_images_default_to_the_charts_app_version_and_a_digest_wins(helm_env) -> None:
    env = env_of(render_operator(helm_env))
    (container,) = render_operator(helm_env).pod["containers"]
    assert container["image"] == "ghcr.io/zthumb/operator:0.1.0"
    assert env["ZTHUMB_OPERATOR_TRAINER_IMAGE"] == "ghcr.io/zthumb/trainer:0.1.0"
    digest = "sha256:" + "a" * 64
    env = env_of(
        render_operator(helm_env, {"trainerImage.digest": digest, "trainerImage.registry": "r.example"})
    )
    assert env["ZTHUMB_OPERATOR_TRAINER_IMAGE"] == f"r.example/zthumb/trainer@{digest}"


def test_admission_disabled_renders_no_policy(helm_env) -> None:
    rendered = render_operator(helm_env, {"admission.enabled": "false"})
    assert not rendered.has("ValidatingAdmissionPolicy") and not rendered.has(
        "ValidatingAdmissionPolicyBinding"
    )


def test_the_helm_test_pod_reaches_the_metrics_service(helm_env) -> None:
    rendered = render_operator(helm_env, {"metrics.port": "9191", "metrics.serviceMonitor.enabled": "true"})
    service = rendered.get("Service", "zthumb-operator-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9191, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = rendered.pod["containers"]
    assert {"name": "metrics", "containerPort": 9191} in container["ports"]
    test_pod = rendered.get("Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert not service["spec"]["selector"].items() <= test_pod["metadata"]["labels"].items()
    test_env = {e["name"]: e["value"] for e in test_pod["spec"]["containers"][0]["env"]}
    assert test_env["METRICS_HOST"] == f"zthumb-operator-metrics.{NAMESPACE}.svc"
    assert test_env["METRICS_PORT"] == "9191"
    assert test_pod["spec"]["containers"][0]["image"] == "ghcr.io/zthumb/helm-test:0.1.0"
    monitor = rendered.get("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"rbac.clusterQueues": "true"}, "rbac.clusterQueues"),
        (
            {"metrics.service.enabled": "false", "metrics.serviceMonitor.enabled": "true"},
            "metrics.serviceMonitor.enabled",
        ),
        ({"metrics.port": "8080"}, "metrics.port"),
        ({"runPolicy.allowedTrainerImages": "{*,ghcr.io/zthumb/trainer:}"}, "runPolicy.allowedTrainerImages"),
    ],
)
def test_combinations_the_schema_cannot_refuse_are_refused_by_name(helm_env, values, named) -> None:
    proc = helm(
        helm_env, "template", "zthumb-operator", str(OPERATOR_CHART), "--kube-version", "1.36.3",
        *set_args(values), check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "VALUES VALIDATION" in proc.stderr and f"{named}:" in proc.stderr, proc.stderr
