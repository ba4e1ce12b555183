# shellcheck shell=bash
# The local cluster's REAL node, sourced by hack/cluster/cluster.sh (it uses that
# script's variables and helpers: STATE_DIR, PKI_DIR, PID_DIR, LOG_DIR,
# BIN_DIR, CACHE_DIR, KUBECONFIG_FILE, log, die, wait_until, pid_of,
# start_component, stop_component, kubectl_admin, sign_cert, write_kubeconfig).
#
# One kubelet (node zthumb-real-0) with containerd + runc + the Debian CNI
# plugins on a bridge zt0 (10.88.0.1/16), kube-proxy in nftables mode, CoreDNS
# for cluster.local and a hostPath storage provisioner, all host processes
# started from the cached binaries. Everything the node writes lives under
# ${STATE_DIR}/node, except the few host paths that cannot be moved; those are
# removed by node_host_cleanup (see the list there).

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
# shellcheck disable=SC2034 # read by hack/cluster/cluster.sh, which sources this file
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

# ---------------------------------------------------------------------------
# PKI for the node (called from generate_pki)
# ---------------------------------------------------------------------------
node_generate_pki() {
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # The kubelet's own identity: the Node authorizer and NodeRestriction then
  # limit it to its node and the pods bound to it.
  sign_cert kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" "${client}"
  sign_cert kubelet-serving "/CN=${NODE_NAME}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:${NODE_IP},DNS:${NODE_NAME}"
  sign_cert apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" "${client}"
  # The bootstrap ClusterRoleBinding system:node-proxier names this user.
  sign_cert kube-proxy "/CN=system:kube-proxy" "${client}"
}

# ---------------------------------------------------------------------------
# Host state: bridge, forwarding guard, and the leftovers of a crashed run.
# ---------------------------------------------------------------------------
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

# ---------------------------------------------------------------------------
# Configuration files
# ---------------------------------------------------------------------------
node_write_configs() {
  mkdir -p "${NODE_DIR}"/{cni/net.d,cni/ipam,run,containerd-state,kubelet/pki,pod-logs,volumes,certs.d/_default}
  write_kubeconfig "${NODE_DIR}/kubelet.kubeconfig" "system:node:${NODE_NAME}" kubelet
  write_kubeconfig "${NODE_DIR}/kube-proxy.kubeconfig" system:kube-proxy kube-proxy

  # Registry lookups go to a closed loopback port: a missing image fails at
  # once and nothing is ever pulled from outside this machine.
  cat >"${NODE_DIR}/certs.d/_default/hosts.toml" <<'EOF'
server = "http://127.0.0.1:1"
[host."http://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF

  cat >"${NODE_DIR}/containerd.toml" <<EOF
version = 3
root = "${NODE_CONTAINERD_ROOT}"
state = "${NODE_DIR}/containerd-state"
# opt writes /opt/containerd, nri listens on /var/run/nri: neither is needed.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri"]

[grpc]
  address = "${CONTAINERD_SOCK}"
[ttrpc]
  address = "${NODE_RUN}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "${PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "${NODE_DIR}/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE: lowering oom_score_adj fails.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "${NODE_DIR}/cni/net.d"
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "${RUNC_ROOT}"
        SystemdCgroup = false

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF

  # Bridge without gateway mode (that would switch on host-wide forwarding):
  # the script put 10.88.0.1 on zt0 itself. Pods get routes to the pod and
  # Service ranges only, and no default route.
  cat >"${NODE_DIR}/cni/net.d/10-zthumb.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "zthumb",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE}",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE_DIR}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_IP}", "rangeStart": "10.88.1.1"}]],
        "routes": [{"dst": "${SERVICE_CIDR}", "gw": "${NODE_IP}"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"${NODE_DIR}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hosts are refused from 1.35 on unless this is false.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
tlsCertFile: ${PKI_DIR}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI_DIR}/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: ${PKI_DIR}/ca.crt}
# Only holders of a certificate of the cluster CA get this far (the apiserver
# and the admin); they may do everything.
authorization: {mode: AlwaysAllow}
clusterDNS: [${CLUSTER_DNS_IP}]
clusterDomain: cluster.local
resolvConf: ""
failSwapOn: false
oomScoreAdj: 0
maxPods: 50
podLogsDir: ${NODE_DIR}/pod-logs
volumePluginDir: ${NODE_DIR}/kubelet/volume-plugins
# Imported images are never garbage-collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF

  cat >"${NODE_DIR}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: ${NODE_DIR}/kube-proxy.kubeconfig
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
clusterCIDR: ${POD_CIDR}
nodePortAddresses: ["${NODE_IP}/32"]
healthzBindAddress: 127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${KUBE_PROXY_METRICS_PORT}
# Leave the host-wide conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

  # No forward plugin: names outside the cluster zones are REFUSED at once.
  cat >"${NODE_DIR}/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${NODE_IP}
    errors
    health 127.0.0.1:${COREDNS_HEALTH_PORT}
    ready 127.0.0.1:${COREDNS_READY_PORT}
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${KUBECONFIG_FILE} zthumb-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
}

node_cluster_objects() {
  cat <<EOF
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: ${CLUSTER_DNS_IP}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
# CoreDNS runs on the host, bound to the bridge address: a hand-made slice.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: hack-cluster.zthumb.io
addressType: IPv4
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
endpoints:
- addresses: ["${NODE_IP}"]
  conditions: {ready: true}
  nodeName: ${NODE_NAME}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: ${STORAGE_CLASS}
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: zthumb.io/hostpath
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
# Only the real node has the volumes' directory; kwok's nodes must never be
# picked for a pod whose claim is still unbound.
allowedTopologies:
- matchLabelExpressions:
  - key: kubernetes.io/hostname
    values: [${NODE_NAME}]
EOF
}

# ---------------------------------------------------------------------------
# up / down
# ---------------------------------------------------------------------------
# node_import ARCHIVE...: OCI (or docker) archives into the node's containerd.
node_import() {
  local f
  for f in "$@"; do
    [[ -f "${f}" ]] || die "no such image archive: ${f}"
    log "importing ${f} into ${NODE_NAME}'s containerd (k8s.io namespace)"
    ctr_node images import "${f}" >&2
  done
}

node_gpu_patch() {
  kubectl_admin patch node "${NODE_NAME}" --subresource=status --type=merge \
    -p "{\"status\":{\"capacity\":{\"nvidia.com/gpu\":\"${NODE_GPUS}\"},\"allocatable\":{\"nvidia.com/gpu\":\"${NODE_GPUS}\"}}}" >/dev/null
}

node_gpu_ok() {
  [[ "$(kubectl_admin get node "${NODE_NAME}" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "${NODE_GPUS}" ]]
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
