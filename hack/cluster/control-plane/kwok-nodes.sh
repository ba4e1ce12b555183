# shellcheck shell=bash
# Sourced by hack/cluster/cluster.sh only: phase 6 of `up`, kwok and its simulated nodes (two
# 8-GPU nodes and one CPU node). kwok manages nodes carrying the kwok.x-k8s.io/node=fake
# annotation; their status (capacity etc.) is taken as we create it.
# Needs hack/cluster/lib/state.sh (STATE_DIR, HOST, UP_TIMEOUT, start_component, kubectl_admin,
# wait_until) and cluster.sh's settings (STAGES_DIR, KWOK_PORT).

node_manifest() {
  local name="$1" pool="$2" cpu="$3" memory="$4" gpus="$5"
  local gpu_labels="" taints="" gpu_res=""
  if ((gpus > 0)); then
    gpu_labels="    nvidia.com/gpu.present: \"true\"
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3
    nvidia.com/gpu.count: \"${gpus}\""
    taints="  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule"
    gpu_res="    nvidia.com/gpu: \"${gpus}\""
  fi
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: ${name}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: ${name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node.kubernetes.io/instance-type: zthumb-fake-${pool}
    zthumb.io/pool: ${pool}
${gpu_labels}
spec:
${taints}
status:
  capacity: &res
    cpu: "${cpu}"
    memory: ${memory}
    pods: "110"
    ephemeral-storage: 1Ti
${gpu_res}
  allocatable: *res
EOF
}

nodes_manifest() {
  node_manifest zthumb-gpu-0 gpu 32 256Gi 8
  node_manifest zthumb-gpu-1 gpu 32 256Gi 8
  node_manifest zthumb-cpu-0 cpu 16 64Gi 0
}

# `up`, phase 6: kwok and its simulated nodes, until they are Ready and the default namespace
# can take pods.
up_kwok_nodes() {
  local stages
  # kwok ships no built-in stages; feed it the release's "fast" ones (copied
  # by build-k8s.sh): nodes become Ready and keep a lease, pods go Running,
  # pods owned by a Job go Succeeded, deleted pods go away.
  stages="$(find "${STAGES_DIR}" -name '*.yaml' | sort | paste -sd, -)"
  start_component kwok \
    --kubeconfig "${STATE_DIR}/kwok.kubeconfig" \
    --config "${stages}" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip "${HOST}" --node-port "${KWOK_PORT}" \
    --server-address "${HOST}:${KWOK_PORT}" \
    --cidr 10.244.0.0/16 \
    --node-lease-duration-seconds 40

  nodes_manifest | kubectl_admin apply -f - >/dev/null
  wait_until "${UP_TIMEOUT}" 0.5 "kwok nodes Ready" \
    kubectl_admin wait --for=condition=Ready node --all --timeout=5s
  # Pods cannot be created until the ServiceAccount controller has made the
  # namespace's "default" SA; wait so the first test does not race it.
  wait_until "${UP_TIMEOUT}" 0.5 "default ServiceAccount" \
    kubectl_admin get serviceaccount default -n default
  wait_until "${UP_TIMEOUT}" 0.5 "kube-root-ca.crt ConfigMap" \
    kubectl_admin get configmap kube-root-ca.crt -n default
}
