"""templates/deployment.yaml: the server's pod in its variants (GPU, CPU, existing claim, release
names, strategy, LoRA path and backends, compile) and the init container that fetches the base model.

The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

import pytest
from chart_render import CHART, RESTRICTED_CONTAINER, helm, needs_helm, render, set_args
from zthumb_contract.env import REPORTS_DIR
from zthumb_contract.steps import EVAL_REPORTS_DIR


@needs_helm
def test_default_render(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    r = render(helm_env)
    # No PodDisruptionBudget: with one replica it protects nothing (test_pdb.py).
    server = ["Deployment", "Service", "ServiceAccount", "PersistentVolumeClaim", "Pod"]
    # The generated API key, and ingress from the release namespace only (test_api_key.py).
    assert r.kinds() == sorted([*server, "Secret", "NetworkPolicy"])
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
    # Never open by default: the key the chart generates, from its Secret (test_api_key.py).
    assert env["ZTHUMB_API_KEY"] == {"secretKeyRef": {"name": "zthumb-api-key", "key": "api-key"}}

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
    # One replica: a disruption budget would protect nothing (test_resources.py).
    assert not r.has("PodDisruptionBudget")


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
