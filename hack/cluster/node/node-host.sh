# shellcheck shell=bash
# Sourced by hack/cluster/node/real-node.sh only: the real node's host state, set up and torn
# down. The host-wide lock and owner file (two clusters never share the node), node_preflight
# (build what is missing, refuse another live owner, clean a crashed run's leftovers),
# node_bridge_up (bridge zt0, routes, the forwarding guard) and node_host_cleanup, which removes
# every host path the node cannot keep under the state dir (listed there).
# Needs hack/cluster/lib/state.sh (STATE_DIR, HACK_DIR, log, die) and real-node.sh's settings
# (NODE_*, POD_CIDR, SERVICE_CIDR, CONTAINERD_SOCK, RUNC_ROOT, node_missing_parts).

node_owner_alive() {
  # The owner file names a state dir; it is alive when its kubelet or
  # containerd pid file points at a live process of that state dir.
  local owner="$1" name pid
  for name in kubelet containerd kube-apiserver; do
    [[ -f "${owner}/pids/${name}.pid" ]] || continue
    pid="$(<"${owner}/pids/${name}.pid")"
    [[ "${pid}" =~ ^[0-9]+$ && -r "/proc/${pid}/cmdline" ]] || continue
    tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${owner}" && return 0
  done
  return 1
}

# node_lock: take the host-wide lock (fd 7; start_component keeps it from the
# components). Held until this script exits. Children that run cluster.sh
# again get NODE_LOCK_HELD=1 and share it.
node_lock() {
  [[ -z "${NODE_LOCK_HELD:-}" ]] || return 0
  exec 7>"${NODE_LOCK_FILE}"
  if ! flock -w 900 7; then
    die "another hack/cluster/cluster.sh held ${NODE_LOCK_FILE} for 15 minutes; giving up"
  fi
  export NODE_LOCK_HELD=1
}

# node_owns_host: true when no cluster or this one owns the node's host state.
node_owns_host() {
  [[ ! -f "${NODE_OWNER_FILE}" || "$(<"${NODE_OWNER_FILE}")" == "${STATE_DIR}" ]]
}

# node_preflight: build what is missing, refuse when another live cluster owns
# the node, clean a crashed run's leftovers. Runs before `up` arms its
# failure trap (the cleanup is best effort and may fail harmlessly).
node_preflight() {
  local owner missing
  ((EUID == 0)) || die "the real node needs root (or run with ZTHUMB_REAL_NODE=0)"
  mapfile -t missing < <(node_missing_parts)
  if ((${#missing[@]})); then
    log "real node parts missing (${missing[*]}); running hack/cluster/build-k8s.sh"
    "${HACK_DIR}/cluster/build-k8s.sh"
  fi
  # Pod -> Service -> pod on the same bridge needs bridged packets to pass
  # netfilter (conntrack undoes the DNAT on the reply).
  if [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    modprobe br_netfilter 2>/dev/null ||
      log "WARNING: no br_netfilter; pod-to-Service traffic between pods will fail"
  elif [[ "$(</proc/sys/net/bridge/bridge-nf-call-iptables)" != 1 ]]; then
    log "WARNING: net.bridge.bridge-nf-call-iptables=0; pod-to-Service traffic between pods will fail"
  fi
  if [[ -f "${NODE_OWNER_FILE}" ]]; then
    owner="$(<"${NODE_OWNER_FILE}")"
    if [[ "${owner}" != "${STATE_DIR}" ]]; then
      if node_owner_alive "${owner}"; then
        die "another local cluster (${owner}) runs the real node; stop it first (ZTHUMB_CLUSTER_DIR=${owner} hack/cluster/cluster.sh down)"
      fi
      if [[ -f "${owner}/.zthumb-cluster" ]]; then
        log "the real node of a crashed cluster in ${owner} is left over; taking that cluster down"
        ZTHUMB_CLUSTER_DIR="${owner}" "${HACK_DIR}/cluster/cluster.sh" down
      fi
    fi
  fi
  if [[ -f "${NODE_OWNER_FILE}" ]] || ip link show "${NODE_BRIDGE}" >/dev/null 2>&1 ||
    nft list table ip kube-proxy >/dev/null 2>&1 || [[ -d /run/containerd/s ]]; then
    log "leftovers of an earlier real node found; cleaning them first"
    node_host_cleanup
  fi
}

# node_bridge_up: the bridge zt0 with the node's address, and the guards.
node_bridge_up() {
  echo "${STATE_DIR}" >"${NODE_OWNER_FILE}"
  ip link add "${NODE_BRIDGE}" type bridge
  ip addr add "${NODE_IP}/16" dev "${NODE_BRIDGE}"
  ip link set "${NODE_BRIDGE}" up
  # Host traffic to a ClusterIP leaves through the bridge (kube-proxy DNATs it
  # there). Safety net: if the bridge ever goes away while something still
  # dials the pod or Service range, these blackholes (higher metric, so
  # unused while zt0 is up) keep the packets on this machine.
  ip route add "${SERVICE_CIDR}" dev "${NODE_BRIDGE}" src "${NODE_IP}"
  ip route add blackhole "${POD_CIDR}" metric 4000
  ip route add blackhole "${SERVICE_CIDR}" metric 4000
  # Forwarding on the bridge only (ClusterIP traffic from pod to pod needs it);
  # the host-wide net.ipv4.ip_forward is left alone.
  sysctl -qw "net.ipv4.conf.${NODE_BRIDGE}.forwarding=1"
  # And nothing that enters from the bridge is forwarded anywhere but back to
  # the bridge: pods can never reach beyond this machine.
  nft -f - <<EOF
table inet ${NODE_NFT_TABLE} {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "${NODE_BRIDGE}" oifname != "${NODE_BRIDGE}" counter drop
  }
}
EOF
}

# node_unmount_under DIR: unmount every mount point below DIR, deepest first.
node_unmount_under() {
  local dir="$1" i mp
  [[ -n "${dir}" && "${dir}" == /* ]] || return 0
  for ((i = 0; i < 3; i++)); do
    # Field 5 of mountinfo is the mount point (octal escapes for spaces).
    mapfile -t mps < <(awk -v d="${dir}/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    ((${#mps[@]})) || return 0
    for mp in "${mps[@]}"; do
      mp="$(printf '%b' "${mp}")"
      umount "${mp}" 2>/dev/null || umount -l "${mp}" 2>/dev/null || true
    done
  done
}

# node_kill_shims: containerd shims of OUR containerd (their command line names
# our socket), never anyone else's.
node_kill_shims() {
  local sig="$1" pid cmd
  for pid in /proc/[0-9]*; do
    pid="${pid#/proc/}"
    cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/${pid}/cmdline")" || continue
    [[ "${cmd}" == *containerd-shim-runc-v2* && "${cmd}" == *"${CONTAINERD_SOCK}"* ]] || continue
    kill "-${sig}" "${pid}" 2>/dev/null || true
  done
}

# The shim runs runc with --root <Root>/<containerd namespace>.
node_runc() { runc --root "${RUNC_ROOT}/k8s.io" "$@"; }

# node_kill_pod_processes: every process in the pods' cgroups (kubelet's
# cgroupfs layout puts them all under kubepods), whatever runc still knows.
node_kill_pod_processes() {
  local i pids
  for ((i = 0; i < 3; i++)); do
    pids="$(find /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods -name cgroup.procs \
      -exec cat {} + 2>/dev/null | sort -u | tr '\n' ' ')"
    [[ -n "${pids// /}" ]] || return 0
    # shellcheck disable=SC2086
    kill -KILL ${pids} 2>/dev/null
    sleep 0.5
  done
}

# node_host_cleanup: everything the node leaves on the host, idempotent. Safe
# to run when nothing is there.
node_host_cleanup() {
  # Best effort all the way through: one failing step must not skip the rest.
  local - id i t chain ipt
  set +e +o pipefail
  # Containers first (kubelet is stopped by now, so nothing restarts them).
  if [[ -d "${RUNC_ROOT}/k8s.io" ]]; then
    for id in $(node_runc list -q 2>/dev/null); do
      node_runc kill --all "${id}" KILL 2>/dev/null || true
    done
  fi
  node_kill_pod_processes
  node_kill_shims TERM
  for ((i = 0; i < 20; i++)); do
    pgrep -f -- "containerd-shim-runc-v2.*${CONTAINERD_SOCK}" >/dev/null || break
    sleep 0.25
  done
  node_kill_shims KILL
  if [[ -d "${RUNC_ROOT}/k8s.io" ]]; then
    for id in $(node_runc list -q 2>/dev/null); do
      node_runc delete --force "${id}" 2>/dev/null || true
    done
  fi
  node_kill_pod_processes
  node_unmount_under "${NODE_DIR}"
  node_unmount_under "${NODE_CONTAINERD_ROOT}"
  # Pod veths die with their network namespaces; drop any that did not.
  if ip link show "${NODE_BRIDGE}" >/dev/null 2>&1; then
    for id in $(ip -o link show master "${NODE_BRIDGE}" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "${id}" 2>/dev/null || true
    done
    ip link del "${NODE_BRIDGE}" 2>/dev/null || true
  fi
  nft delete table inet "${NODE_NFT_TABLE}" 2>/dev/null || true
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  # KUBE-* chains that kubelet (and kube-proxy's iptables cleanup) add.
  for ipt in iptables ip6tables; do
    command -v "${ipt}" >/dev/null || continue
    for t in mangle nat filter; do
      # Rules that jump to KUBE-* chains from other chains, then the chains.
      "${ipt}" -w 5 -t "${t}" -S 2>/dev/null | grep -E '^-A [^ ]+ .*-j KUBE-' | grep -vE '^-A KUBE-' |
        while read -r _ rest; do
          # shellcheck disable=SC2086
          "${ipt}" -w 5 -t "${t}" -D ${rest} 2>/dev/null || true
        done
      for chain in $("${ipt}" -w 5 -t "${t}" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "${ipt}" -w 5 -t "${t}" -F "${chain}" 2>/dev/null || true
      done
      for chain in $("${ipt}" -w 5 -t "${t}" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "${ipt}" -w 5 -t "${t}" -X "${chain}" 2>/dev/null || true
      done
    done
  done
  conntrack -D -s "${POD_CIDR}" >/dev/null 2>&1 || true
  conntrack -D -d "${SERVICE_CIDR}" >/dev/null 2>&1 || true
  # Paths kubelet, the shims and the CNI plugins use whatever we configure.
  rm -rf /var/lib/kubelet/device-plugins /var/lib/kubelet/pod-resources
  rmdir /var/lib/kubelet 2>/dev/null || true
  rm -rf /run/containerd/s /run/containerd/fifo
  rmdir /run/containerd 2>/dev/null || true
  # libcni's result cache (our network "zthumb" and containerd's loopback).
  rm -rf /var/lib/cni/results/zthumb-* /var/lib/cni/results/cni-loopback-* /var/lib/cni/networks/zthumb
  rmdir /var/lib/cni/results /var/lib/cni/networks /var/lib/cni 2>/dev/null || true
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "${NODE_DIR}/*" -delete 2>/dev/null || true
    rmdir /var/log/containers 2>/dev/null || true
  fi
  # Pod cgroups (cgroupfs driver, cgroup v1): empty ones only, deepest first.
  for t in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [[ -d "${t}" ]] && find "${t}" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # Last: the safety-net routes (nothing of ours runs any more).
  ip route del blackhole "${POD_CIDR}" metric 4000 2>/dev/null
  ip route del blackhole "${SERVICE_CIDR}" metric 4000 2>/dev/null
  rm -f "${NODE_OWNER_FILE}"
  return 0
}
