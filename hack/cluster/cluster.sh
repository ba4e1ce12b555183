#!/usr/bin/env bash
# Local Kubernetes control plane for e2e tests (hack/cluster/README-cluster.md): real etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, with kwok
# simulating two 8-GPU nodes and one CPU node plus pod lifecycles, and (as
# root, by default) one REAL node, zthumb-real-0: kubelet, containerd, runc,
# CNI bridge zt0, kube-proxy, CoreDNS and a storage provisioner (see
# hack/cluster/node/real-node.sh and hack/cluster/README-cluster.md).
#
#   hack/cluster/cluster.sh up       start (no-op when already up)
#   hack/cluster/cluster.sh down     stop what `up` started (by pid file), remove state
#   hack/cluster/cluster.sh env      print `export KUBECONFIG=... PATH=...` for eval
#   hack/cluster/cluster.sh status   print whether it is up; exit 1 when it is not
#   hack/cluster/cluster.sh bindir   print the directory of the cached binaries
#   hack/cluster/cluster.sh import ARCHIVE...   import OCI/docker image archives into
#                            the real node's containerd (also hack/cluster/node-import.sh)
#
# We launch the processes ourselves instead of using `kwokctl --runtime
# binary`: every flag is visible here, nothing can be downloaded behind our
# back, and `down` knows exactly which pids are ours.
#
# This file holds the commands and the control plane's settings; the rest is sourced:
#   lib/state.sh               state dirs, mode, process and certificate helpers (shared with
#                              the real node)
#   node/real-node.sh          the real node (node_preflight, node_up, node_stop, ...)
#   control-plane/preflight.sh     `up` phase 1: mode, host lock, leftovers, binaries, ports
#   control-plane/credentials.sh   `up` phase 2: certificates and kubeconfigs
#   control-plane/processes.sh     `up` phases 3-5: etcd, kube-apiserver, controllers
#   control-plane/kwok-nodes.sh    `up` phase 6: kwok and its simulated nodes
#
# Env overrides (defaults in brackets):
#   ZTHUMB_CACHE [~/.cache/zthumb]  ZTHUMB_CLUSTER_DIR [$ZTHUMB_CACHE/cluster]
#   ZTHUMB_ETCD_PORT [12379]  ZTHUMB_ETCD_PEER_PORT [12380]
#   ZTHUMB_APISERVER_PORT [16443]  ZTHUMB_KCM_PORT [16257]
#   ZTHUMB_SCHEDULER_PORT [16259]  ZTHUMB_KWOK_PORT [16080]
#   ZTHUMB_UP_TIMEOUT [60]  seconds each wait in `up` may take
#   ZTHUMB_REAL_NODE [1 as root, else 0]  start the real node with `up`
set -euo pipefail

CLUSTER_SH_DIR="$(dirname "${BASH_SOURCE[0]}")"
# HACK_DIR, STATE_DIR, PKI_DIR, PID_DIR, LOG_DIR, KUBECONFIG_FILE, MARKER, BIN_DIR, CACHE_DIR,
# HOST, APISERVER_PORT, UP_TIMEOUT, set_mode (REAL_NODE, API_HOST, APISERVER_URL), log, die,
# wait_until, kubectl_admin, pid_of, start_component, stop_component, sign_cert, write_kubeconfig.
# shellcheck source=hack/cluster/lib/state.sh
source "${CLUSTER_SH_DIR}/lib/state.sh"
STAGES_DIR="${CACHE_DIR}/kwok-stages"
ETCD_PORT="${ZTHUMB_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ZTHUMB_ETCD_PEER_PORT:-12380}"
KCM_PORT="${ZTHUMB_KCM_PORT:-16257}"
SCHEDULER_PORT="${ZTHUMB_SCHEDULER_PORT:-16259}"
KWOK_PORT="${ZTHUMB_KWOK_PORT:-16080}"

# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl helm)

# shellcheck source=hack/cluster/node/real-node.sh
source "${CLUSTER_SH_DIR}/node/real-node.sh"
# shellcheck source=hack/cluster/control-plane/preflight.sh
source "${CLUSTER_SH_DIR}/control-plane/preflight.sh"
# shellcheck source=hack/cluster/control-plane/credentials.sh
source "${CLUSTER_SH_DIR}/control-plane/credentials.sh"
# shellcheck source=hack/cluster/control-plane/processes.sh
source "${CLUSTER_SH_DIR}/control-plane/processes.sh"
# shellcheck source=hack/cluster/control-plane/kwok-nodes.sh
source "${CLUSTER_SH_DIR}/control-plane/kwok-nodes.sh"

on_up_failure() {
  local name
  log "up failed; last log lines follow, then cleaning up"
  for name in "${COMPONENTS[@]}" "${NODE_COMPONENTS[@]}"; do
    if [[ -f "${LOG_DIR}/${name}.log" ]]; then
      log "---- ${name}.log"
      tail -n 15 "${LOG_DIR}/${name}.log" >&2 || true
    fi
  done
  # Keep the logs of the failed attempt where they can still be read.
  if [[ -d "${LOG_DIR}" ]]; then
    rm -rf "${TMPDIR:-/tmp}/zthumb-cluster-failed-logs"
    cp -r "${LOG_DIR}" "${TMPDIR:-/tmp}/zthumb-cluster-failed-logs" || true
    log "logs copied to ${TMPDIR:-/tmp}/zthumb-cluster-failed-logs"
  fi
  cmd_down
}

cmd_up() {
  local start="${SECONDS}"
  if is_up; then
    log "already up at ${APISERVER_URL} (state ${STATE_DIR})"
    return 0
  fi
  up_preflight
  mkdir -p "${STATE_DIR}" "${PID_DIR}" "${LOG_DIR}"
  touch "${MARKER}"
  trap on_up_failure ERR
  set -E  # the trap also fires inside functions (the phases, node_up, ...)
  up_credentials
  up_etcd
  up_apiserver
  up_controllers
  up_kwok_nodes
  if [[ "${REAL_NODE}" == 1 ]]; then node_up; fi
  trap - ERR

  log "up in $((SECONDS - start))s: ${APISERVER_URL}, kubeconfig ${KUBECONFIG_FILE}"
  log "use: eval \"\$(${HACK_DIR}/cluster/cluster.sh env)\""
}

cmd_down() {
  local i
  trap - ERR
  if [[ ! -e "${STATE_DIR}" ]]; then
    # A real node whose state dir is gone (deleted by hand) still leaves
    # host state behind; clean it when it is ours.
    if [[ -f "${NODE_OWNER_FILE}" && "$(<"${NODE_OWNER_FILE}")" == "${STATE_DIR}" ]]; then
      node_lock
      node_host_cleanup
      log "cleaned the real node's host leftovers"
    fi
    log "not running (no ${STATE_DIR})"
    return 0
  fi
  [[ -f "${MARKER}" ]] || die "${STATE_DIR} exists but has no ${MARKER##*/} marker; refusing to touch it"
  local real_node=0
  if [[ -f "${STATE_DIR}/.real-node" ]] ||
    [[ -f "${NODE_OWNER_FILE}" && "$(<"${NODE_OWNER_FILE}")" == "${STATE_DIR}" ]]; then
    real_node=1
  fi
  if ((real_node)); then
    node_lock
    node_stop
  fi
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${COMPONENTS[i]}"
  done
  # Bridge, nftables, mounts, shims, host paths: only once nothing of ours
  # can dial the bridge address any more.
  # Never another live cluster's: the host state is its now.
  if ((real_node)); then
    if node_owns_host; then
      node_host_cleanup
    else
      log "the real node's host state belongs to $(<"${NODE_OWNER_FILE}") now; leaving it alone"
      node_unmount_under "${NODE_DIR}"
    fi
  fi
  rm -rf "${STATE_DIR}"
  log "down; removed ${STATE_DIR}"
}

cmd_env() {
  [[ -f "${KUBECONFIG_FILE}" ]] || die "cluster not up (no ${KUBECONFIG_FILE}); run hack/cluster/cluster.sh up"
  printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_FILE}"
  # ${PATH} must stay literal: it expands when the caller evals this line.
  # shellcheck disable=SC2016
  printf 'export PATH=%q:"${PATH}"\n' "${BIN_DIR}"
}

# The cached binaries' directory (kubectl, helm, ...), cluster up or not: lint and the
# chart's template tests need helm without a running control plane.
cmd_bindir() { printf '%s\n' "${BIN_DIR}"; }

cmd_status() {
  local name pid rc=0
  if is_up; then
    echo "up: ${APISERVER_URL} (kubeconfig ${KUBECONFIG_FILE})"
  else
    echo "down"
    rc=1
  fi
  for name in "${COMPONENTS[@]}" "${NODE_COMPONENTS[@]}"; do
    if pid="$(pid_of "${name}")"; then
      echo "  ${name}: running (pid ${pid})"
    elif [[ -f "${PID_DIR}/${name}.pid" ]]; then
      echo "  ${name}: DEAD (see ${LOG_DIR}/${name}.log)"
      rc=1
    fi
  done
  if ((rc == 0)); then
    kubectl_admin get nodes -o wide 2>&1 | sed 's/^/  /'
  fi
  return "${rc}"
}

# Import image archives into the real node's containerd (k8s.io namespace),
# so pods can use them with imagePullPolicy Never/IfNotPresent.
cmd_import() {
  (($# > 0)) || die "usage: $0 import ARCHIVE..."
  if [[ "${REAL_NODE}" != 1 ]] || ! pid_of containerd >/dev/null; then
    die "the real node is not running (hack/cluster/cluster.sh up as root)"
  fi
  node_import "$@"
}

case "${1:-}" in
  up) cmd_up ;;
  import)
    shift
    cmd_import "$@"
    ;;
  bindir) cmd_bindir ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|down|env|status|bindir|import ARCHIVE..." >&2
    exit 2
    ;;
esac
