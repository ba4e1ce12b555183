#!/usr/bin/env bash
# The local cluster's REAL node. One kubelet (node zthumb-real-0) with containerd + runc + the
# Debian CNI plugins on a bridge zt0 (10.88.0.1/16), kube-proxy in nftables mode, CoreDNS for
# cluster.local and a hostPath storage provisioner, all host processes started from the cached
# binaries. Everything the node writes lives under ${STATE_DIR}/node, except the few host paths
# that cannot be moved; those are removed by node_host_cleanup (see the list in node-host.sh).
#
# hack/cluster/cluster.sh sources this file and calls its phases: node_lock, node_preflight,
# node_bridge_up, node_generate_pki, node_up, node_stop, node_host_cleanup, node_import. It also
# runs on its own (the cluster's env overrides apply, ZTHUMB_CLUSTER_DIR and ZTHUMB_CACHE first):
#
#   hack/cluster/node/real-node.sh status   the node's processes, who owns the host state, and
#                                           the Node object; exit 1 unless every process runs
#
# Needs nothing but its own files: hack/cluster/lib/state.sh (the state dirs, log, die,
# wait_until, pid_of, start_component, stop_component, kubectl_admin, sign_cert,
# write_kubeconfig) and its parts, sourced below:
#   node-host.sh     host setup and cleanup: lock, owner, preflight, bridge, leftovers
#   node-configs.sh  the node's certificates and configuration files
#   node-objects.sh  the node's objects in the cluster (kube-dns, StorageClass, GPU capacity)
# This file holds the node's settings and its lifecycle (node_up, node_stop, node_import).
#
# Env overrides (defaults in brackets), beside those of hack/cluster/cluster.sh:
#   ZTHUMB_NODE_GPUS [2]  ZTHUMB_NODE_IMAGES [$ZTHUMB_CACHE/node-images]
#   ZTHUMB_NODE_CONTAINERD_ROOT [$ZTHUMB_CACHE/node-containerd]
#   ZTHUMB_KUBELET_HEALTHZ_PORT [10248]  ZTHUMB_KUBE_PROXY_HEALTHZ_PORT [10256]
#   ZTHUMB_KUBE_PROXY_METRICS_PORT [10249]  ZTHUMB_COREDNS_HEALTH_PORT [16054]
#   ZTHUMB_COREDNS_READY_PORT [16181]
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then set -euo pipefail; fi

# shellcheck source=hack/cluster/lib/state.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/state.sh"

NODE_NAME="zthumb-real-0"
NODE_BRIDGE="zt0"
NODE_IP="10.88.0.1"
POD_CIDR="10.88.0.0/16"
SERVICE_CIDR="10.96.0.0/16"
CLUSTER_DNS_IP="10.96.0.10"
NODE_GPUS="${ZTHUMB_NODE_GPUS:-2}"
NODE_DIR="${STATE_DIR}/node"
NODE_RUN="${NODE_DIR}/run"
CONTAINERD_SOCK="${NODE_RUN}/containerd.sock"
RUNC_ROOT="${NODE_RUN}/runc"
IMAGE_DIR="${CACHE_DIR}/images"
# Extra OCI archives in this directory are imported at every `up`.
NODE_IMAGES_DIR="${ZTHUMB_NODE_IMAGES:-${CACHE_ROOT}/node-images}"
# containerd's root (content store, snapshots, metadata) outlives the cluster,
# so imported images survive `down` and `up` (importing a 3 GB image takes
# minutes here). Like a node reboot: the state dir is fresh each time, and
# `down` removes the pods' containers and sandboxes from it.
NODE_CONTAINERD_ROOT="${ZTHUMB_NODE_CONTAINERD_ROOT:-${CACHE_ROOT}/node-containerd}"
PAUSE_IMAGE="localhost/zthumb/pause:3.10"
STORAGE_CLASS="zthumb-local"
KUBELET_HEALTHZ_PORT="${ZTHUMB_KUBELET_HEALTHZ_PORT:-10248}"
KUBE_PROXY_HEALTHZ_PORT="${ZTHUMB_KUBE_PROXY_HEALTHZ_PORT:-10256}"
KUBE_PROXY_METRICS_PORT="${ZTHUMB_KUBE_PROXY_METRICS_PORT:-10249}"
COREDNS_HEALTH_PORT="${ZTHUMB_COREDNS_HEALTH_PORT:-16054}"
COREDNS_READY_PORT="${ZTHUMB_COREDNS_READY_PORT:-16181}"
# Host-wide marker: which state dir owns the bridge and the host leftovers.
NODE_OWNER_FILE="/run/zthumb-real-node.owner"
# Host-wide lock held by `up` and `down` of any cluster with a real node, so
# two of them (other worktrees, CI) never set up or tear down at once.
NODE_LOCK_FILE="/run/zthumb-real-node.lock"
NODE_NFT_TABLE="zthumb-node"
# Its processes, in start order (`status` lists them, and so does cluster.sh).
NODE_COMPONENTS=(containerd kubelet kube-proxy coredns zthumb-hostpath-provisioner)
NODE_BINARIES=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr coredns zthumb-hostpath-provisioner)
NODE_PACKAGES=(runc catatonit containernetworking-plugins nftables iptables conntrack buildah busybox-static)

ctr_node() { "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }

node_missing_parts() {
  local b p
  for b in "${NODE_BINARIES[@]}"; do [[ -x "${BIN_DIR}/${b}" ]] || echo "${b}"; done
  for f in pause.tar busybox.tar; do [[ -f "${IMAGE_DIR}/${f}" ]] || echo "images/${f}"; done
  for p in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "${p}" 2>/dev/null | grep -q '^install ok installed$' || echo "package:${p}"
  done
}

# shellcheck source=hack/cluster/node/node-host.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-host.sh"
# shellcheck source=hack/cluster/node/node-configs.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-configs.sh"
# shellcheck source=hack/cluster/node/node-objects.sh
source "$(dirname "${BASH_SOURCE[0]}")/node-objects.sh"

# node_import ARCHIVE...: OCI (or docker) archives into the node's containerd.
node_import() {
  local f
  for f in "$@"; do
    [[ -f "${f}" ]] || die "no such image archive: ${f}"
    log "importing ${f} into ${NODE_NAME}'s containerd (k8s.io namespace)"
    ctr_node images import "${f}" >&2
  done
}

node_up() {
  local start="${SECONDS}" f
  node_write_configs
  mkdir -p "${NODE_CONTAINERD_ROOT}"
  PATH="${BIN_DIR}:${PATH}" start_component containerd --config "${NODE_DIR}/containerd.toml"
  wait_until "${UP_TIMEOUT}" 0.5 "containerd" ctr_node version
  node_import "${IMAGE_DIR}/pause.tar" "${IMAGE_DIR}/busybox.tar"
  if [[ -d "${NODE_IMAGES_DIR}" ]]; then
    for f in "${NODE_IMAGES_DIR}"/*.tar; do
      [[ -f "${f}" ]] && node_import "${f}"
    done
  fi

  # Taints: nvidia.com/gpu like kwok's GPU nodes, plus a soft one so that
  # pods which do not ask for this node (nodeSelector zthumb.io/node=real)
  # keep going to kwok's nodes: the scheduler avoids the real node for them
  # whenever another node fits, and nothing they run needs a real image.
  start_component kubelet \
    --config "${NODE_DIR}/kubelet.yaml" \
    --kubeconfig "${NODE_DIR}/kubelet.kubeconfig" \
    --root-dir "${NODE_DIR}/kubelet" \
    --cert-dir "${NODE_DIR}/kubelet/pki" \
    --hostname-override "${NODE_NAME}" \
    --node-ip "${NODE_IP}" \
    --node-labels "zthumb.io/pool=gpu,zthumb.io/node=real,nvidia.com/gpu.present=true,nvidia.com/gpu.count=${NODE_GPUS},node.kubernetes.io/instance-type=zthumb-real" \
    --register-with-taints "nvidia.com/gpu=present:NoSchedule,zthumb.io/node=real:PreferNoSchedule"
  start_component kube-proxy --config "${NODE_DIR}/kube-proxy.yaml"
  node_cluster_objects | kubectl_admin apply -f - >/dev/null
  start_component coredns -conf "${NODE_DIR}/Corefile"
  start_component zthumb-hostpath-provisioner \
    --kubeconfig "${KUBECONFIG_FILE}" --root "${NODE_DIR}/volumes" --node "${NODE_NAME}"

  wait_until 120 0.5 "node ${NODE_NAME} Ready" \
    kubectl_admin wait --for=condition=Ready "node/${NODE_NAME}" --timeout=5s
  # The extended resource: capacity and allocatable, kept by kubelet after.
  wait_until 30 0.5 "nvidia.com/gpu on ${NODE_NAME}" node_gpu_patch
  wait_until 30 0.5 "nvidia.com/gpu allocatable on ${NODE_NAME}" node_gpu_ok
  wait_until "${UP_TIMEOUT}" 0.5 "kube-proxy healthz" \
    curl -fsS --max-time 2 "http://127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}/healthz"
  wait_until "${UP_TIMEOUT}" 0.5 "CoreDNS ready" \
    curl -fsS --max-time 2 "http://127.0.0.1:${COREDNS_READY_PORT}/ready"
  log "real node ${NODE_NAME} Ready in $((SECONDS - start))s"
}

# node_stop: the node's processes and containers. The bridge stays until
# node_host_cleanup, after the control plane is stopped too: a process still
# dialling 10.88.0.1 must find a local address, never the default route.
node_stop() {
  local name
  for name in zthumb-hostpath-provisioner coredns kube-proxy kubelet; do
    stop_component "${name}"
  done
  # Containers while containerd still runs, then containerd; shims and
  # leftovers go in node_host_cleanup.
  if [[ -d "${RUNC_ROOT}/k8s.io" ]]; then
    for name in $(node_runc list -q 2>/dev/null); do
      node_runc kill --all "${name}" KILL 2>/dev/null || true
    done
  fi
  if pid_of containerd >/dev/null; then node_purge_pods; fi
  stop_component containerd
}

# node_purge_pods: drop the pods' sandboxes and containers from containerd's
# (persistent) metadata, so the next `up` starts clean; the images stay. After
# a crash the next kubelet removes such leftovers itself, as after a reboot.
node_purge_pods() {
  local id
  for id in $(timeout 10 "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" --namespace k8s.io sandboxes ls -q 2>/dev/null); do
    timeout 10 "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" --namespace k8s.io sandboxes rm --force "${id}" >/dev/null 2>&1 || true
  done
  for id in $(timeout 10 "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" --namespace k8s.io tasks ls -q 2>/dev/null); do
    timeout 10 "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" --namespace k8s.io tasks rm --force "${id}" >/dev/null 2>&1 || true
  done
  for id in $(timeout 10 "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" --namespace k8s.io containers ls -q 2>/dev/null); do
    timeout 10 "${BIN_DIR}/ctr" --address "${CONTAINERD_SOCK}" --namespace k8s.io containers rm "${id}" >/dev/null 2>&1 || true
  done
}

# node_status: the `status` command (see the header).
node_status() {
  local name pid rc=0 owner="none"
  if [[ -f "${NODE_OWNER_FILE}" ]]; then owner="$(<"${NODE_OWNER_FILE}")"; fi
  for name in "${NODE_COMPONENTS[@]}"; do
    pid_of "${name}" >/dev/null || rc=1
  done
  if ((rc == 0)); then echo "${NODE_NAME}: up (state ${STATE_DIR})"; else echo "${NODE_NAME}: down (state ${STATE_DIR})"; fi
  echo "  host state owner: ${owner}"
  for name in "${NODE_COMPONENTS[@]}"; do
    if pid="$(pid_of "${name}")"; then
      echo "  ${name}: running (pid ${pid})"
    elif [[ -f "${PID_DIR}/${name}.pid" ]]; then
      echo "  ${name}: DEAD (see ${LOG_DIR}/${name}.log)"
    else
      echo "  ${name}: not started"
    fi
  done
  # The apiserver listens on the bridge address: never dial it without the bridge.
  if ((rc == 0)) && ip -4 -o addr show dev "${NODE_BRIDGE}" 2>/dev/null | grep -qF " ${NODE_IP}/"; then
    kubectl_admin get node "${NODE_NAME}" -o wide 2>&1 | sed 's/^/  /' || rc=1
  fi
  return "${rc}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    status) node_status ;;
    *)
      echo "usage: $0 status" >&2
      exit 2
      ;;
  esac
fi
