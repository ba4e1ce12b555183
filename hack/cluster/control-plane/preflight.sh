# shellcheck shell=bash
# Sourced by hack/cluster/cluster.sh only: phase 1 of `up`, before anything is started or
# written. Holds port_in_use, ensure_binaries (build what the cache lacks) and up_preflight
# (the mode, the real node's host lock, no leftovers, the binaries, free ports).
# Needs hack/cluster/lib/state.sh (STATE_DIR, BIN_DIR, HOST, set_mode, log, die), cluster.sh's
# settings (BINARIES, STAGES_DIR, the *_PORT variables, cmd_down) and hack/cluster/node/real-node.sh
# (node_lock, node_preflight).

# port_in_use PORT: true when something accepts TCP connections on it.
port_in_use() { (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null; }

ensure_binaries() {
  local b
  for b in "${BINARIES[@]}"; do
    if [[ ! -x "${BIN_DIR}/${b}" ]]; then
      log "${b} missing from ${BIN_DIR}; running hack/cluster/build-k8s.sh (slow the first time)"
      "${HACK_DIR}/cluster/build-k8s.sh"
      break
    fi
  done
  [[ -d "${STAGES_DIR}" ]] || "${HACK_DIR}/cluster/build-k8s.sh"
}

# `up`, phase 1: the mode, the real node's host lock, no leftovers, the binaries, free ports.
up_preflight() {
  local port
  set_mode
  if [[ "${REAL_NODE}" == 1 ]] && ((EUID == 0)); then node_lock; fi
  # Leftovers of a crashed or half-started run: clear them first.
  if [[ -e "${STATE_DIR}" ]]; then
    log "stale state in ${STATE_DIR}; cleaning up first"
    cmd_down
  fi
  set_mode
  ensure_binaries
  for port in "${ETCD_PORT}" "${ETCD_PEER_PORT}" "${APISERVER_PORT}" "${KCM_PORT}" "${SCHEDULER_PORT}" "${KWOK_PORT}"; do
    if port_in_use "${port}"; then
      die "port ${HOST}:${port} is already in use (override with ZTHUMB_*_PORT)"
    fi
  done

  if [[ "${REAL_NODE}" == 1 ]]; then node_preflight; fi
}
