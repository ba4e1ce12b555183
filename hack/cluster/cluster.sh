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
# Env overrides (defaults in brackets):
#   ZTHUMB_CACHE [~/.cache/zthumb]  ZTHUMB_CLUSTER_DIR [$ZTHUMB_CACHE/cluster]
#   ZTHUMB_ETCD_PORT [12379]  ZTHUMB_ETCD_PEER_PORT [12380]
#   ZTHUMB_APISERVER_PORT [16443]  ZTHUMB_KCM_PORT [16257]
#   ZTHUMB_SCHEDULER_PORT [16259]  ZTHUMB_KWOK_PORT [16080]
#   ZTHUMB_UP_TIMEOUT [60]  seconds each wait in `up` may take
#   ZTHUMB_REAL_NODE [1 as root, else 0]  start the real node with `up`
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# log, die, wait_until.
# shellcheck source=hack/lib/log.sh
source "${HACK_DIR}/lib/log.sh"
# K8S_VERSION, CACHE_ROOT, CACHE_DIR, BIN_DIR.
# shellcheck source=hack/lib/build-cache.sh
source "${HACK_DIR}/lib/build-cache.sh"
LOG_TAG=cluster
STAGES_DIR="${CACHE_DIR}/kwok-stages"
STATE_DIR="${ZTHUMB_CLUSTER_DIR:-${CACHE_ROOT}/cluster}"
PKI_DIR="${STATE_DIR}/pki"
PID_DIR="${STATE_DIR}/pids"
LOG_DIR="${STATE_DIR}/logs"
# Marker proving a directory is ours before `down` deletes it.
MARKER="${STATE_DIR}/.zthumb-cluster"
KUBECONFIG_FILE="${STATE_DIR}/kubeconfig"

HOST="127.0.0.1"
ETCD_PORT="${ZTHUMB_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ZTHUMB_ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${ZTHUMB_APISERVER_PORT:-16443}"
KCM_PORT="${ZTHUMB_KCM_PORT:-16257}"
SCHEDULER_PORT="${ZTHUMB_SCHEDULER_PORT:-16259}"
KWOK_PORT="${ZTHUMB_KWOK_PORT:-16080}"
UP_TIMEOUT="${ZTHUMB_UP_TIMEOUT:-60}"

# With the real node the apiserver binds to the node's bridge address instead
# of loopback: pods reach it through the `kubernetes` Service (10.96.0.1:443
# -> 10.88.0.1:<port>), and the host reaches it at that local address too.
# A running cluster keeps the mode it was started with (marker file).
set_mode() {
  if [[ -f "${STATE_DIR}/.real-node" ]]; then
    REAL_NODE=1
  elif [[ -f "${MARKER}" ]]; then
    REAL_NODE=0
  elif ((EUID == 0)); then
    REAL_NODE="${ZTHUMB_REAL_NODE:-1}"
  else
    REAL_NODE="${ZTHUMB_REAL_NODE:-0}"
  fi
  if [[ "${REAL_NODE}" == 1 ]]; then API_HOST="10.88.0.1"; else API_HOST="${HOST}"; fi
  APISERVER_URL="https://${API_HOST}:${APISERVER_PORT}"
}

# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl helm)

# shellcheck source=hack/cluster/node/real-node.sh
source "${HACK_DIR}/cluster/node/real-node.sh"
set_mode

# port_in_use PORT: true when something accepts TCP connections on it.
port_in_use() { (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null; }

kubectl_admin() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_FILE}" "$@"; }

# pid_of NAME: print the pid from NAME's pid file if that process is alive
# AND is ours (its command line mentions our state dir), so a recycled pid
# never gets signalled.
pid_of() {
  local file="${PID_DIR}/$1.pid" pid
  [[ -f "${file}" ]] || return 1
  pid="$(<"${file}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/${pid}/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${STATE_DIR}" || return 1
  echo "${pid}"
}

# start_component NAME ARGS...: run BIN_DIR/NAME detached, log + pid file.
# setsid puts it in its own session so a Ctrl-C aimed at the caller (or the
# end of a CI step's process group) does not take the cluster down with it.
# A non-interactive shell's background child is not a group leader, so
# setsid execs in place and $! is the component's own pid.
start_component() {
  local name="$1"
  shift
  # 7>&-: the real node's host-wide lock must not outlive this script.
  setsid "${BIN_DIR}/${name}" "$@" </dev/null >"${LOG_DIR}/${name}.log" 2>&1 7>&- &
  echo "$!" >"${PID_DIR}/${name}.pid"
}

apiserver_ready() {
  # With the real node the apiserver is on the bridge address: never dial it
  # when the bridge is not there (the packets would take the default route).
  if [[ "${API_HOST}" != "${HOST}" ]] && ! ip -4 -o addr show dev "${NODE_BRIDGE}" 2>/dev/null | grep -qF " ${API_HOST}/"; then
    return 1
  fi
  curl -fsS --max-time 2 --cacert "${PKI_DIR}/ca.crt" \
    --cert "${PKI_DIR}/admin.crt" --key "${PKI_DIR}/admin.key" \
    "${APISERVER_URL}/readyz" >/dev/null
}

is_up() { pid_of kube-apiserver >/dev/null && [[ -f "${PKI_DIR}/admin.crt" ]] && apiserver_ready; }

# ---------------------------------------------------------------------------
# PKI: one CA signs the apiserver serving cert and every client cert; the
# front-proxy CA and the ServiceAccount signing key pair are separate (as in
# kubeadm).
# ---------------------------------------------------------------------------
# sign_cert NAME SUBJECT EXTENSIONS [CA]: key + cert signed by CA (default "ca").
sign_cert() {
  local name="$1" subj="$2" ext="$3" ca="${4:-ca}"
  openssl req -new -nodes -newkey rsa:2048 -keyout "${PKI_DIR}/${name}.key" \
    -subj "${subj}" -out "${PKI_DIR}/${name}.csr" 2>/dev/null
  printf '%s\n' "${ext}" >"${PKI_DIR}/${name}.ext"
  openssl x509 -req -in "${PKI_DIR}/${name}.csr" -CA "${PKI_DIR}/${ca}.crt" \
    -CAkey "${PKI_DIR}/${ca}.key" -CAcreateserial -days 365 -sha256 \
    -extfile "${PKI_DIR}/${name}.ext" -out "${PKI_DIR}/${name}.crt" 2>/dev/null
  rm -f "${PKI_DIR}/${name}.csr" "${PKI_DIR}/${name}.ext"
}

generate_pki() {
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  mkdir -p "${PKI_DIR}"
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "${PKI_DIR}/ca.key" \
    -out "${PKI_DIR}/ca.crt" -days 3650 -sha256 -subj "/CN=zthumb-local-ca" 2>/dev/null
  # 10.96.0.1 is the `kubernetes` Service IP of --service-cluster-ip-range.
  sign_cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:${HOST},IP:10.96.0.1,IP:10.88.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign_cert admin "/O=system:masters/CN=zthumb-admin" "${client}"
  # Dedicated identities so RBAC's bootstrap roles for these components apply.
  sign_cert controller-manager "/CN=system:kube-controller-manager" "${client}"
  sign_cert scheduler "/CN=system:kube-scheduler" "${client}"
  sign_cert kwok "/O=system:masters/CN=kwok-controller" "${client}"
  # Front-proxy (requestheader) CA: without it kube-controller-manager and
  # kube-scheduler log "missing content for CA bundle" forever, and aggregated
  # APIs (metrics-server and the like) could not be registered.
  openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "${PKI_DIR}/front-proxy-ca.key" \
    -out "${PKI_DIR}/front-proxy-ca.crt" -days 3650 -sha256 -subj "/CN=zthumb-front-proxy-ca" 2>/dev/null
  sign_cert front-proxy-client "/CN=front-proxy-client" "${client}" front-proxy-ca
  openssl genrsa -out "${PKI_DIR}/sa.key" 2048 2>/dev/null
  openssl rsa -in "${PKI_DIR}/sa.key" -pubout -out "${PKI_DIR}/sa.pub" 2>/dev/null
  if [[ "${REAL_NODE}" == 1 ]]; then node_generate_pki; fi
  chmod 600 "${PKI_DIR}"/*.key
}

# write_kubeconfig FILE USER CERTNAME: certs embedded so the file stands alone.
write_kubeconfig() {
  local file="$1" user="$2" cert="$3"
  cat >"${file}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: zthumb-local
  cluster:
    server: ${APISERVER_URL}
    certificate-authority-data: $(base64 -w0 "${PKI_DIR}/ca.crt")
users:
- name: ${user}
  user:
    client-certificate-data: $(base64 -w0 "${PKI_DIR}/${cert}.crt")
    client-key-data: $(base64 -w0 "${PKI_DIR}/${cert}.key")
contexts:
- name: zthumb-local
  context:
    cluster: zthumb-local
    user: ${user}
current-context: zthumb-local
EOF
  chmod 600 "${file}"
}

# ---------------------------------------------------------------------------
# Fake nodes. kwok manages nodes carrying the kwok.x-k8s.io/node=fake
# annotation; their status (capacity etc.) is taken as we create it.
# ---------------------------------------------------------------------------
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

# `up`, phase 2 (after the state directory is ours and failures clean up): the real node's
# bridge, the certificates and a kubeconfig per client.
up_credentials() {
  if [[ "${REAL_NODE}" == 1 ]]; then
    touch "${STATE_DIR}/.real-node"
    node_bridge_up
  fi
  generate_pki
  write_kubeconfig "${KUBECONFIG_FILE}" zthumb-admin admin
  write_kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  write_kubeconfig "${STATE_DIR}/scheduler.kubeconfig" system:kube-scheduler scheduler
  write_kubeconfig "${STATE_DIR}/kwok.kubeconfig" kwok-controller kwok
}

# `up`, phase 3: etcd, until healthy.
up_etcd() {
  # --unsafe-no-fsync: throwaway test data, and fsync dominates on slow disks.
  start_component etcd \
    --name zthumb --data-dir "${STATE_DIR}/etcd" \
    --listen-client-urls "http://${HOST}:${ETCD_PORT}" \
    --advertise-client-urls "http://${HOST}:${ETCD_PORT}" \
    --listen-peer-urls "http://${HOST}:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://${HOST}:${ETCD_PEER_PORT}" \
    --initial-cluster "zthumb=http://${HOST}:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync --log-level warn
  wait_until "${UP_TIMEOUT}" 0.5 "etcd health" \
    curl -fsS --max-time 2 "http://${HOST}:${ETCD_PORT}/health"
}

# `up`, phase 4: kube-apiserver, until /readyz.
up_apiserver() {
  # Without the real node: --endpoint-reconciler-type=none, since a loopback
  # advertise address is not a valid Endpoints IP and nothing runs in-cluster.
  # With it: bound to and advertised on the bridge address, the `kubernetes`
  # Service gets that endpoint, and the apiserver reaches the kubelet by its
  # InternalIP with its own client certificate, verifying the kubelet's.
  # PodSecurity and ServiceAccount admission are on by default.
  local apiserver_mode_flags=(--endpoint-reconciler-type none)
  if [[ "${REAL_NODE}" == 1 ]]; then
    apiserver_mode_flags=(
      --endpoint-reconciler-type lease
      --kubelet-client-certificate "${PKI_DIR}/apiserver-kubelet-client.crt"
      --kubelet-client-key "${PKI_DIR}/apiserver-kubelet-client.key"
      --kubelet-certificate-authority "${PKI_DIR}/ca.crt"
      --kubelet-preferred-address-types "InternalIP,Hostname"
    )
  fi
  start_component kube-apiserver \
    --bind-address "${API_HOST}" --advertise-address "${API_HOST}" \
    --secure-port "${APISERVER_PORT}" \
    --etcd-servers "http://${HOST}:${ETCD_PORT}" \
    --cert-dir "${STATE_DIR}/apiserver-certs" \
    --tls-cert-file "${PKI_DIR}/apiserver.crt" \
    --tls-private-key-file "${PKI_DIR}/apiserver.key" \
    --client-ca-file "${PKI_DIR}/ca.crt" \
    --requestheader-client-ca-file "${PKI_DIR}/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "${PKI_DIR}/front-proxy-client.crt" \
    --proxy-client-key-file "${PKI_DIR}/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "${PKI_DIR}/sa.pub" \
    --service-account-signing-key-file "${PKI_DIR}/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    "${apiserver_mode_flags[@]}" \
    --allow-privileged=true \
    --profiling=false
  wait_until "${UP_TIMEOUT}" 0.5 "kube-apiserver /readyz" apiserver_ready
}

# `up`, phase 5: kube-controller-manager and kube-scheduler (their readiness shows in phase 6).
up_controllers() {
  # --flex-volume-plugin-dir: the default makes it mkdir
  # /usr/libexec/kubernetes/... on the host; keep everything in STATE_DIR.
  start_component kube-controller-manager \
    --kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" \
    --authentication-kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" \
    --authorization-kubeconfig "${STATE_DIR}/controller-manager.kubeconfig" \
    --bind-address "${HOST}" --secure-port "${KCM_PORT}" \
    --cert-dir "${STATE_DIR}/kcm-certs" \
    --controllers '*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file "${PKI_DIR}/sa.key" \
    --root-ca-file "${PKI_DIR}/ca.crt" \
    --cluster-signing-cert-file "${PKI_DIR}/ca.crt" \
    --cluster-signing-key-file "${PKI_DIR}/ca.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --flex-volume-plugin-dir "${STATE_DIR}/flexvolume" \
    --leader-elect=false

  start_component kube-scheduler \
    --kubeconfig "${STATE_DIR}/scheduler.kubeconfig" \
    --authentication-kubeconfig "${STATE_DIR}/scheduler.kubeconfig" \
    --authorization-kubeconfig "${STATE_DIR}/scheduler.kubeconfig" \
    --bind-address "${HOST}" --secure-port "${SCHEDULER_PORT}" \
    --cert-dir "${STATE_DIR}/scheduler-certs" \
    --leader-elect=false
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

# stop_component NAME: TERM, wait (bounded), then KILL.
stop_component() {
  local name="$1" pid i
  if pid="$(pid_of "${name}")"; then
    kill -TERM "${pid}" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
      [[ -d "/proc/${pid}" ]] || break
      sleep 0.25
    done
    if [[ -d "/proc/${pid}" ]]; then
      log "${name} (pid ${pid}) ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
    log "stopped ${name} (pid ${pid})"
  fi
  rm -f "${PID_DIR}/${name}.pid"
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
