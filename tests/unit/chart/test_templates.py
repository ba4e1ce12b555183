"""Template tests of charts/zthumb: lint, render variants, schema, validateValues.

They run the real `helm` binary (built from Go modules by hack/build-k8s.sh;
CI puts its bin dir on PATH). Without helm on PATH they are skipped locally,
but with CI set they fail: CI must not go green by testing nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from zthumb_contract.env import REPORTS_DIR
from zthumb_contract.steps import EVAL_REPORTS_DIR

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "zthumb"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
HELM = shutil.which("helm")
IN_CI = bool(os.environ.get("CI"))

RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

needs_helm = pytest.mark.skipif(
    HELM is None and not IN_CI,
    reason="helm is not on PATH (build it with hack/build-k8s.sh and put "
    "~/.cache/zthumb/k8s-v1.36.3/bin on PATH); with CI set this is a failure instead",
)


@pytest.fixture(scope="session")
def helm_bin() -> list[str]:
    """The helm command; outside CI a missing helm skips (needs_helm), in CI it fails."""
    if HELM is None:
        pytest.fail("CI is set but `helm` is not on PATH", pytrace=False)
    return [HELM]


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # Isolated helm home: tests neither read nor write the user's helm config.
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def helm(helm_env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    proc = subprocess.run(
        [HELM, *args], capture_output=True, text=True, env=helm_env, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def set_args(values: dict[str, str] | None) -> list[str]:
    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set", f"{key}={value}"]
    return out


class Rendered:
    """Parsed `helm template` output, indexed by (kind, name)."""

    def __init__(self, text: str) -> None:
        self.docs = [d for d in yaml.safe_load_all(text) if d]
        self.text = text

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            d for d in self.docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
        ]
        assert len(found) == 1, f"expected one {kind}/{name}, got {[d['metadata']['name'] for d in found]}"
        return found[0]

    def has(self, kind: str) -> bool:
        return any(d["kind"] == kind for d in self.docs)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def server(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "zthumb"]
        return container

    @property
    def env(self) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.server["env"]}


def render(
    helm_env: dict[str, str],
    values: dict[str, str] | None = None,
    *extra: str,
    release: str = "zthumb",
    namespace: str = "ml",
) -> Rendered:
    proc = helm(
        helm_env,
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        "1.36.3",
        *set_args(values),
        *extra,
    )
    return Rendered(proc.stdout)


def render_fails(helm_env: dict[str, str], values: dict[str, str], *extra: str) -> str:
    proc = helm(
        helm_env,
        "template",
        "zthumb",
        str(CHART),
        "--kube-version",
        "1.36.3",
        *set_args(values),
        *extra,
        check=False,
    )
    assert proc.returncode != 0, f"expected helm template to fail for {values}, it rendered:\n{proc.stdout}"
    return proc.stderr


# ---------------------------------------------------------------- values <-> schema (no helm needed)


def param_keys() -> list[str]:
    return re.findall(r"^\s*## @param (\S+)", VALUES.read_text(), flags=re.MULTILINE)


def schema_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path
        yield from schema_paths(sub, f"{path}.")


def value_leaves(node: Any, params: set[str], prefix: str = "") -> Iterator[str]:
    """Keys of values.yaml that need a @param: documented keys end the walk."""
    for key, sub in node.items():
        path = f"{prefix}{key}"
        if path in params or not (isinstance(sub, dict) and sub):
            yield path
        else:
            yield from value_leaves(sub, params, f"{path}.")


def test_every_value_has_a_param_line() -> None:
    params = param_keys()
    assert len(params) == len(set(params)), "duplicate @param lines"
    values = yaml.safe_load(VALUES.read_text())
    leaves = set(value_leaves(values, set(params)))
    assert leaves - set(params) == set(), "values without a `## @param` line"
    assert set(params) - leaves == set(), "@param lines for keys that are not in values.yaml"


def test_params_and_schema_are_in_sync() -> None:
    params = set(param_keys())
    schema = json.loads(SCHEMA.read_text())
    paths = set(schema_paths(schema))
    assert params - paths == set(), "@param keys missing from values.schema.json"
    # Every schema property is a @param, a group above one, or structure below one.
    orphans = {
        p
        for p in paths
        if p not in params
        and not any(q.startswith(p + ".") for q in params)
        and not any(p.startswith(q + ".") for q in params)
        and p != "global"
    }
    assert orphans == set(), "schema properties with no `## @param` in values.yaml"
    # Groups are closed, so a typo (`gpu.enable`) is refused instead of ignored.
    groups = {p for p in paths if any(q.startswith(p + ".") for q in params)}
    for group in groups:
        node = schema
        for part in group.split("."):
            node = node["properties"][part]
        assert node.get("additionalProperties") is False, f"{group} must set additionalProperties: false"
    assert schema.get("additionalProperties") is False


def test_defaults_validate_against_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(VALUES.read_text()), schema)


@pytest.mark.parametrize(
    ("path", "bad", "field"),
    [
        (("server", "backend"), "sdxl", "backend"),
        (("gpu", "count"), 0, "count"),
        (("gpu", "enable"), True, "enable"),
        (("updateStrategy", "type"), "BlueGreen", "type"),
        (("persistence", "accessModes"), ["ReadWriteSometimes"], "accessModes"),
        (("service", "port"), 70000, "port"),
        (("lora", "scale"), "high", "scale"),
        (("lora", "maxPerRequest"), 0, "maxPerRequest"),
        (("lora", "maxPerRequest"), 33, "maxPerRequest"),
        (("image", "digest"), "md5:abc", "digest"),
        (("pdb", "maxUnavailable"), "lots", "maxUnavailable"),
    ],
)
def test_schema_refuses_bad_values_python(path: tuple[str, ...], bad: Any, field: str) -> None:
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load(VALUES.read_text())
    node = values
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.validate(values, schema)
    assert field in str(err.value.message) + "".join(str(p) for p in err.value.absolute_path)


# ---------------------------------------------------------------- helm lint / template


@needs_helm
def test_helm_lint_strict(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    out = helm(helm_env, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@needs_helm
@pytest.mark.parametrize(
    "values",
    [
        {"gpu.enabled": "false"},
        {"persistence.create": "false", "persistence.existingClaim": "zthumb-data"},
        {"networkPolicy.enabled": "true", "auth.apiKey": "s3cret", "tests.generate.enabled": "true"},
        {"updateStrategy.type": "Recreate"},
    ],
)
def test_helm_lint_strict_variants(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str]
) -> None:
    helm(helm_env, "lint", "--strict", str(CHART), *set_args(values))


@needs_helm
def test_default_render(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env)
    assert r.kinds() == sorted(
        ["Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim", "PodDisruptionBudget", "Pod"]
    )
    selector = {"app.kubernetes.io/name": "zthumb", "app.kubernetes.io/instance": "zthumb"}

    dep = r.deployment
    assert dep["metadata"]["name"] == "zthumb"
    assert dep["metadata"]["namespace"] == "ml"
    assert selector.items() <= dep["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }

    svc = r.get("Service", "zthumb")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == selector
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]

    assert r.server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = r.env
    assert env["ZTHUMB_BACKEND"] == "full"
    assert env["ZTHUMB_MODEL_PATH"] == "/data/models/sd_xl_base_1.0.safetensors"
    assert env["ZTHUMB_LORA_ROOT"] == "/data/models/lora"
    # The operator's eval Jobs write their reports there (the contract's path).
    assert env[REPORTS_DIR] == f"/data/{EVAL_REPORTS_DIR}"
    assert env["ZTHUMB_PORT"] == "8080"
    assert env["ZTHUMB_DEVICE"] == "cuda"
    assert env["ZTHUMB_DTYPE"] == "float16"
    # The operator owns the adapter: nothing rendered, so `helm upgrade` cannot reset it.
    assert "Z_LORA_PATH" not in env
    assert "Z_LORA_SCALE" not in env
    assert "ZTHUMB_API_KEY" not in env
    assert not r.has("Secret")

    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"

    # Probes sized for model loading.
    startup = r.server["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600
    assert r.server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert r.server["livenessProbe"]["httpGet"]["path"] == "/healthz"

    # Pod Security "restricted".
    pod = r.pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert RESTRICTED_CONTAINER.items() <= r.server["securityContext"].items()
    assert r.server["securityContext"]["readOnlyRootFilesystem"] is True
    assert r.server["securityContext"]["runAsUser"] == 10001
    mounts = {m["name"]: m["mountPath"] for m in r.server["volumeMounts"]}
    assert mounts == {"data": "/data", "tmp": "/tmp", "cache": "/cache"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "zthumb-data"}
    assert "emptyDir" in volumes["tmp"]
    assert "emptyDir" in volumes["cache"]
    assert env["HF_HOME"].startswith("/cache/")
    assert pod["serviceAccountName"] == "zthumb"
    assert pod["automountServiceAccountToken"] is False
    assert r.get("ServiceAccount", "zthumb")["automountServiceAccountToken"] is False

    pvc = r.get("PersistentVolumeClaim", "zthumb-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "storageClassName" not in pvc["spec"]

    pdb = r.get("PodDisruptionBudget", "zthumb")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


@needs_helm
def test_gpu_render(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(
        helm_env,
        {
            "gpu.count": "2",
            "gpu.resourceName": "amd.com/gpu",
            "nodeSelector.zthumb\\.io/pool": "gpu",
            "priorityClassName": "inference-high",
            "tolerations[0].key": "dedicated",
            "tolerations[0].operator": "Equal",
            "tolerations[0].value": "ml",
            "tolerations[0].effect": "NoSchedule",
        },
    )
    assert r.server["resources"]["limits"] == {"memory": "32Gi", "amd.com/gpu": 2}
    assert r.server["resources"]["requests"] == {"cpu": "2", "memory": "16Gi"}
    assert r.pod["nodeSelector"] == {"zthumb.io/pool": "gpu"}
    assert r.pod["priorityClassName"] == "inference-high"
    assert r.pod["tolerations"] == [
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    ]
    assert r.env["ZTHUMB_DEVICE"] == "cuda"


@needs_helm
def test_default_gpu_resources_and_toleration(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env)
    assert r.server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert r.pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@needs_helm
def test_cpu_render(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env, {"gpu.enabled": "false"})
    assert "nvidia.com/gpu" not in r.server["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in r.server["resources"].get("requests", {})
    assert "tolerations" not in r.pod
    assert r.env["ZTHUMB_DEVICE"] == "cpu"
    assert r.env["ZTHUMB_DTYPE"] == "float32"
    assert "nvidia.com/gpu" not in r.text


@needs_helm
def test_existing_claim_render(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(
        helm_env,
        {
            "persistence.create": "false",
            "persistence.existingClaim": "shared-data",
            "persistence.mountPath": "/mnt/zthumb",
        },
    )
    assert not r.has("PersistentVolumeClaim")
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "shared-data"}
    mounts = {m["name"]: m["mountPath"] for m in r.server["volumeMounts"]}
    assert mounts["data"] == "/mnt/zthumb"
    assert r.env["ZTHUMB_MODEL_PATH"] == "/mnt/zthumb/models/sd_xl_base_1.0.safetensors"
    assert r.env["ZTHUMB_LORA_ROOT"] == "/mnt/zthumb/models/lora"
    assert r.env[REPORTS_DIR] == "/mnt/zthumb/outputs/lora_eval"


@needs_helm
def test_release_name_without_chart_name(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env, release="prod")
    assert r.deployment["metadata"]["name"] == "prod-zthumb"
    assert r.get("Service")["metadata"]["name"] == "prod-zthumb"
    assert r.deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "zthumb",
        "app.kubernetes.io/instance": "prod",
    }
    r = render(helm_env, {"fullnameOverride": "sdxl"}, release="prod")
    assert r.deployment["metadata"]["name"] == "sdxl"


@needs_helm
def test_recreate_strategy(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env, {"updateStrategy.type": "Recreate"})
    # The API server refuses a Recreate strategy that carries rollingUpdate.
    assert r.deployment["spec"]["strategy"] == {"type": "Recreate"}


@needs_helm
def test_lora_path_and_backends_render(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(
        helm_env,
        {
            "lora.path": "z-style",
            "lora.scale": "0.6",
            "server.backend": "turbo",
            "server.enabledBackends": "{turbo,full}",
            "model.turboPath": "models/sdxl-turbo",
            "lora.cacheSize": "3",
            "lora.maxPerRequest": "2",
        },
    )
    env = r.env
    assert env["Z_LORA_PATH"] == "/data/models/lora/z-style"
    assert env["Z_LORA_SCALE"] == "0.6"
    assert env["ZTHUMB_BACKEND"] == "turbo"
    assert env["ZTHUMB_ENABLED_BACKENDS"] == "turbo,full"
    assert env["ZTHUMB_TURBO_MODEL_PATH"] == "/data/models/sdxl-turbo"
    assert env["ZTHUMB_LORA_CACHE_SIZE"] == "3"
    assert env["ZTHUMB_MAX_LORAS_PER_REQUEST"] == "2"
    r = render(helm_env, {"lora.path": "/data/models/lora/abs"})
    assert r.env["Z_LORA_PATH"] == "/data/models/lora/abs"
    # The chart's default is the server's default.
    from zthumb.settings import Settings

    assert r.env["ZTHUMB_MAX_LORAS_PER_REQUEST"] == str(Settings().max_loras_per_request)


@needs_helm
def test_compile_render(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    assert render(helm_env).env["ZTHUMB_COMPILE"] == "off"
    assert "ZTHUMB_COMPILE_CACHE_DIR" not in render(helm_env).env
    env = render(helm_env, {"compile.mode": "reduce-overhead", "compile.maxRank": "32"}).env
    assert env["ZTHUMB_COMPILE"] == "reduce-overhead"
    from zthumb.settings import Settings

    assert env["ZTHUMB_COMPILE_LORA"] == Settings().compile_lora == "fuse"  # the server's default
    assert (
        render(helm_env, {"compile.mode": "default", "compile.lora": "slot"}).env["ZTHUMB_COMPILE_LORA"]
        == "slot"
    )
    assert env["ZTHUMB_COMPILE_MAX_RANK"] == "32"
    assert env["ZTHUMB_COMPILE_CACHE_DIR"] == "/data/models/.cache/torchinductor"


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


NOTES_PROBE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  notes: {{ tpl (.Files.Get "notes-probe.txt") . | quote }}
"""


def render_notes(helm_env: dict[str, str], tmp_path: Path, values: dict[str, str] | None = None) -> str:
    """NOTES.txt as `helm install` prints it.

    `helm template` skips NOTES.txt and `helm install --dry-run` needs a
    cluster, so a copy of the chart renders it through `tpl` into a ConfigMap.
    """
    chart = tmp_path / "zthumb"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes-probe.txt")
        (chart / "templates" / "notes-probe.yaml").write_text(NOTES_PROBE)
    proc = helm(
        helm_env,
        "template",
        "zthumb",
        str(chart),
        "-n",
        "ml",
        "--kube-version",
        "1.36.3",
        "--show-only",
        "templates/notes-probe.yaml",
        *set_args(values),
    )
    return yaml.safe_load(proc.stdout)["data"]["notes"]


@needs_helm
def test_notes_print_in_cluster_curl(helm_bin: list[str], helm_env: dict[str, str], tmp_path: Path) -> None:
    notes = render_notes(helm_env, tmp_path)
    assert "curl -s http://zthumb.ml.svc:8080/generate" in notes
    assert "kubectl -n ml rollout status deployment/zthumb" in notes
    assert "helm upgrade` keeps whatever adapter the operator deployed" in notes
    assert "Authorization" not in notes
    notes = render_notes(helm_env, tmp_path, {"auth.apiKey": "k", "lora.path": "z"})
    assert "Authorization: Bearer $ZTHUMB_API_KEY" in notes
    assert "resets it" in notes


@needs_helm
def test_kube_version_constraint(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    proc = helm(helm_env, "template", "zthumb", str(CHART), "--kube-version", "1.27.0", check=False)
    assert proc.returncode != 0
    helm(helm_env, "template", "zthumb", str(CHART), "--kube-version", "1.28.0")
    assert "kubeVersion" in proc.stderr or ">=1.28.0-0" in proc.stderr


@needs_helm
@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"server.backend": "sdxl"}, "server.backend"),
        ({"gpu.count": "0"}, "gpu.count"),
        ({"gpu.enable": "true"}, "enable"),
        ({"updateStrategy.type": "BlueGreen"}, "updateStrategy.type"),
        ({"service.port": "70000"}, "service.port"),
        ({"persistence.accessModes": "{ReadWriteSometimes}"}, "persistence.accessModes"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"compile.mode": "fast"}, "compile.mode"),
        ({"compile.lora": "merge"}, "compile.lora"),
    ],
)
def test_schema_refuses_bad_values_helm(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], named: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "schema" in stderr.lower(), stderr
    # Helm reports the value path with / or . separators depending on the version.
    leaf = named.rsplit(".", maxsplit=1)[-1]
    assert leaf in stderr, stderr


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"server.device": "cpu"}, "gpu.enabled=true requests GPUs but server.device=cpu"),
        ({"gpu.enabled": "false", "server.device": "cuda"}, "server.device=cuda needs a GPU"),
        ({"gpu.enabled": "false", "resources.limits.nvidia\\.com/gpu": "1"}, "gpu.enabled=false"),
        ({"persistence.existingClaim": "data"}, "persistence.existingClaim=data and persistence.create=true"),
        ({"persistence.create": "false"}, "needs persistence.existingClaim"),
        ({"auth.apiKey": "k", "auth.existingSecret": "s"}, "auth.apiKey and auth.existingSecret"),
        (
            {"updateStrategy.type": "Recreate", "replicaCount": "2"},
            "updateStrategy.type=Recreate with replicaCount=2",
        ),
        (
            {
                "updateStrategy.rollingUpdate.maxUnavailable": "0",
                "updateStrategy.rollingUpdate.maxSurge": "0",
            },
            "maxUnavailable and maxSurge are both 0",
        ),
        ({"pdb.minAvailable": "1", "pdb.maxUnavailable": "1"}, "pdb.minAvailable and pdb.maxUnavailable"),
        ({"pdb.minAvailable": "1"}, "equals replicaCount"),
        ({"server.enabledBackends": "{turbo}", "model.turboPath": "t"}, "server.backend=full is not in"),
        ({"server.backend": "gguf"}, "model.ggufUnetPath is empty"),
        ({"gpu.enabled": "false", "server.dtype": "float16"}, "float16 on a CPU"),
        ({"metrics.serviceMonitor.enabled": "true"}, "monitoring.coreos.com/v1"),
    ],
)
def test_validate_values_fails(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], message: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "VALUES VALIDATION" in stderr, stderr
    assert message in stderr, stderr


@needs_helm
def test_fetch_model_init_container_provisions_the_base_model(
    helm_bin: list[str], helm_env: dict[str, str]
) -> None:
    r = render(helm_env, {"model.fetch.tokenSecret.name": "hf"})
    (init,) = r.pod["initContainers"]
    assert init["name"] == "fetch-model"
    assert init["image"] == "ghcr.io/zthumb/trainer:0.1.0"
    args = init["args"]
    assert args[0] == "fetch-model"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags == {
        "--url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
        "sd_xl_base_1.0.safetensors",
        "--sha256": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
        "--output": "/data/models/sd_xl_base_1.0.safetensors",
        "--config-url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/",
        "--config-dir": "/data/models/sd_xl_base_1.0-config",
    }
    # The server reads the config files the init container wrote, offline.
    assert r.env["ZTHUMB_MODEL_CONFIG"] == "/data/models/sd_xl_base_1.0-config"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in init["env"]}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert RESTRICTED_CONTAINER.items() <= init["securityContext"].items()
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert mounts == {"data": "/data", "tmp": "/tmp"}
    assert "readOnly" not in init["volumeMounts"][0]


@needs_helm
def test_fetch_model_follows_model_values_and_can_be_disabled(
    helm_bin: list[str], helm_env: dict[str, str]
) -> None:
    r = render(
        helm_env,
        {
            "model.path": "/models/tiny.safetensors",
            "model.config": "models/tiny-config",
            "model.fetch.url": "http://models.ns.svc:8000/tiny.safetensors",
            "model.fetch.sha256": "a" * 64,
            "model.fetch.configUrl": "",
            "model.fetch.image.tag": "dev",
        },
    )
    (init,) = r.pod["initContainers"]
    assert init["image"] == "ghcr.io/zthumb/trainer:dev"
    assert "--config-url" not in init["args"]
    assert init["args"][init["args"].index("--output") + 1] == "/models/tiny.safetensors"
    assert r.env["ZTHUMB_MODEL_CONFIG"] == "/data/models/tiny-config"
    assert "HF_TOKEN" not in {e["name"] for e in init["env"]}

    r = render(helm_env, {"model.fetch.enabled": "false"})
    assert "initContainers" not in r.pod
    assert "ZTHUMB_MODEL_CONFIG" not in r.env  # no config dir unless one is set or fetched


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model.path": "models/sdxl-dir"}, "is not a .safetensors file"),
        ({"model.fetch.sha256": "abc"}, "sha256"),
        ({"model.fetch.url": "ftp://x/y"}, "url"),
    ],
)
def test_fetch_model_bad_values_are_refused(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], message: str
) -> None:
    proc = helm(
        helm_env, "template", "zthumb", str(CHART), "--kube-version", "1.36.3", *set_args(values), check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr


# ---------------------------------------------------------------- autoscaling (HPA / KEDA)

KEDA_API = ("--api-versions", "keda.sh/v1alpha1")


@needs_helm
def test_autoscaling_is_off_by_default(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env)
    assert not r.has("HorizontalPodAutoscaler")
    assert not r.has("ScaledObject")
    assert r.deployment["spec"]["replicas"] == 1
    # Even where KEDA is installed, nothing is rendered unless asked for.
    assert not render(helm_env, None, *KEDA_API).has("ScaledObject")


@needs_helm
def test_hpa_scales_on_the_queue_depth_pods_metric(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    default = render(helm_env)
    r = render(helm_env, {"autoscaling.enabled": "true"})
    hpa = r.get("HorizontalPodAutoscaler", "zthumb")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["namespace"] == "ml"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "zthumb"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "zthumb_queue_depth"},
                "target": {"type": "AverageValue", "averageValue": "2"},
            },
        }
    ]
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300  # a new replica pays a model load
    # The HPA owns the replica count: `helm upgrade` must not reset it.
    assert "replicas" not in r.deployment["spec"]
    # Every replica gets the same pod template: its own adapter cache, the same env the operator patches.
    assert r.deployment["spec"]["template"] == default.deployment["spec"]["template"]
    assert r.env["ZTHUMB_LORA_CACHE_SIZE"] == "8"
    assert not r.has("ScaledObject")


@needs_helm
def test_hpa_values(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 60, "selectPolicy": "Disabled"}}
    r = render(
        helm_env,
        {
            "autoscaling.enabled": "true",
            "autoscaling.minReplicas": "2",
            "autoscaling.maxReplicas": "10",
            "autoscaling.targetQueueDepth": "0.5",
            "autoscaling.metricName": "zthumb_queue_depth_avg",
        },
        "--set-json",
        f"autoscaling.behavior={json.dumps(behavior)}",
        release="prod",
    )
    hpa = r.get("HorizontalPodAutoscaler", "prod-zthumb")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "prod-zthumb"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    pods = hpa["spec"]["metrics"][0]["pods"]
    assert pods == {
        "metric": {"name": "zthumb_queue_depth_avg"},
        "target": {"type": "AverageValue", "averageValue": "0.5"},
    }
    # Helm merges maps with the defaults: the policies stay unless replaced.
    assert behavior["scaleDown"].items() <= hpa["spec"]["behavior"]["scaleDown"].items()
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 120}
    ]
    # A raised queue bound allows a deeper target.
    r = render(
        helm_env,
        {"autoscaling.enabled": "true", "autoscaling.targetQueueDepth": "12"},
        "--set-json",
        'server.extraEnv=[{"name":"ZTHUMB_MAX_QUEUE","value":"16"}]',
    )
    assert r.get("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "12"


@needs_helm
def test_keda_scaled_object(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    values = {
        "autoscaling.keda.enabled": "true",
        "autoscaling.keda.serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "autoscaling.maxReplicas": "6",
    }
    r = render(helm_env, values, *KEDA_API)
    so = r.get("ScaledObject", "zthumb")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "zthumb"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (15, 300)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["policies"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": 'sum(zthumb_queue_depth{namespace="ml",pod=~"zthumb-[a-z0-9]+-[a-z0-9]+"})',
        "threshold": "2",
    }
    assert "replicas" not in r.deployment["spec"]
    assert not r.has("HorizontalPodAutoscaler")  # KEDA makes its own

    query = 'sum(zthumb_queue_depth{job="zthumb"})'
    r = render(helm_env, {**values, "autoscaling.keda.query": query}, *KEDA_API)
    assert r.get("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"] == query


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "autoscaling.enabled": "true",
                "autoscaling.keda.enabled": "true",
                "autoscaling.keda.serverAddress": "http://p:9090",
            },
            "autoscaling.enabled and autoscaling.keda.enabled are both true",
        ),
        (
            {"autoscaling.enabled": "true", "autoscaling.minReplicas": "5"},
            "autoscaling.minReplicas=5 is above autoscaling.maxReplicas=4",
        ),
        ({"autoscaling.enabled": "true", "replicaCount": "3"}, "replicaCount=3 is ignored while autoscaling"),
        (
            {"autoscaling.enabled": "true", "autoscaling.targetQueueDepth": "8"},
            "is not below the server's queue bound ZTHUMB_MAX_QUEUE=8",
        ),
        (
            {"autoscaling.enabled": "true", "updateStrategy.type": "Recreate"},
            "updateStrategy.type=Recreate with autoscaling.maxReplicas=4",
        ),
        (
            {"autoscaling.enabled": "true", "pdb.minAvailable": "1"},
            "pdb.minAvailable=1 equals autoscaling.minReplicas",
        ),
        ({"autoscaling.keda.enabled": "true"}, "needs autoscaling.keda.serverAddress"),
        (
            {"autoscaling.keda.enabled": "true", "autoscaling.keda.serverAddress": "http://p:9090"},
            "no keda.sh/v1alpha1 API",
        ),
    ],
)
def test_autoscaling_contradictions_are_refused(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], message: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "VALUES VALIDATION" in stderr, stderr
    assert message in stderr, stderr


@needs_helm
def test_queue_bound_from_extra_env_is_checked(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    stderr = render_fails(
        helm_env,
        {"autoscaling.enabled": "true"},
        "--set-json",
        'server.extraEnv=[{"name":"ZTHUMB_MAX_QUEUE","value":"2"}]',
    )
    assert "autoscaling.targetQueueDepth=2 is not below the server's queue bound ZTHUMB_MAX_QUEUE=2" in stderr


@needs_helm
@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"autoscaling.minReplicas": "0"}, "minReplicas"),
        ({"autoscaling.targetQueueDepth": "0"}, "targetQueueDepth"),
        ({"autoscaling.targetQueueDepth": "many"}, "targetQueueDepth"),
        ({"autoscaling.metricName": "queue-depth"}, "metricName"),
        ({"autoscaling.keda.serverAddress": "prometheus:9090"}, "serverAddress"),
        ({"autoscaling.behavior.scaleUp.policies[0].type": "Replicas"}, "type"),
        ({"autoscaling.enable": "true"}, "enable"),
    ],
)
def test_autoscaling_schema_refuses_bad_values(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], named: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "schema" in stderr.lower(), stderr
    assert named in stderr, stderr


@needs_helm
def test_helm_lint_strict_autoscaling(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    # (`helm lint` has no --api-versions: the KEDA variant is covered by the render tests.)
    helm(helm_env, "lint", "--strict", str(CHART), *set_args({"autoscaling.enabled": "true"}))


def test_operator_rollout_reaches_every_autoscaled_replica() -> None:
    """The operator patches the pod template only (never spec.replicas, which the HPA owns), and it
    waits for the live replica count, whatever the HPA made it."""
    from zthumb_operator.deployments import deployment_env_patch, rollout_state

    patch = deployment_env_patch(
        "zthumb", {"Z_LORA_PATH": "run-1", "Z_LORA_SCALE": "0.8"}, lock_owner="run-1"
    )
    assert set(patch["spec"]) == {"template"}

    def deployment(updated: int, available: int, total: int) -> dict[str, Any]:
        return {
            "spec": {"replicas": 3},  # set by the HPA through the scale subresource
            "status": {
                "observedGeneration": 2,
                "updatedReplicas": updated,
                "availableReplicas": available,
                "replicas": total,
            },
        }

    assert not rollout_state(deployment(1, 3, 4), 2).done
    assert not rollout_state(deployment(3, 3, 4), 2).done  # an old replica still serves the old adapter
    assert rollout_state(deployment(3, 3, 3), 2).done


@needs_helm
def test_notes_name_the_autoscaler(helm_bin: list[str], helm_env: dict[str, str], tmp_path: Path) -> None:
    assert "Autoscaling" not in render_notes(helm_env, tmp_path)
    notes = render_notes(helm_env, tmp_path, {"autoscaling.enabled": "true"})
    assert "HorizontalPodAutoscaler/zthumb keeps 1-4 replicas at 2 waiting requests per pod" in notes
    assert "kubectl -n ml describe hpa zthumb" in notes
    assert "prometheus-adapter" in notes
