# shellcheck shell=bash
# Sourced, never run: the local cluster's state layout and the process helpers that both of its
# entry points share, hack/cluster/cluster.sh (the control plane) and hack/cluster/node/real-node.sh
# (the real node). Each sources this file itself, relative to its own location, so either works
# alone; sourcing it again (real-node.sh inside cluster.sh) only assigns the same values again.
#
# Needs nothing: it sources hack/lib/log.sh (log, die, wait_until) and hack/lib/build-cache.sh
# (K8S_VERSION, CACHE_ROOT, CACHE_DIR, BIN_DIR) itself. Provides:
#   HACK_DIR         the hack/ directory (absolute)
#   STATE_DIR        ${ZTHUMB_CLUSTER_DIR:-$CACHE_ROOT/cluster}: everything a running cluster
#                    writes (PKI_DIR, PID_DIR, LOG_DIR, KUBECONFIG_FILE, MARKER below it)
#   HOST, APISERVER_PORT, UP_TIMEOUT   (ZTHUMB_APISERVER_PORT, ZTHUMB_UP_TIMEOUT)
#   REAL_NODE, API_HOST, APISERVER_URL  set by set_mode (called here; `up` calls it again)
#   kubectl_admin, pid_of, start_component, stop_component, sign_cert, write_kubeconfig

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=hack/lib/log.sh
source "${HACK_DIR}/lib/log.sh"
# shellcheck source=hack/lib/build-cache.sh
source "${HACK_DIR}/lib/build-cache.sh"
# After build-cache.sh, which sets its own.
LOG_TAG=cluster
STATE_DIR="${ZTHUMB_CLUSTER_DIR:-${CACHE_ROOT}/cluster}"
PKI_DIR="${STATE_DIR}/pki"
PID_DIR="${STATE_DIR}/pids"
LOG_DIR="${STATE_DIR}/logs"
# Marker proving a directory is ours before `down` deletes it.
MARKER="${STATE_DIR}/.zthumb-cluster"
KUBECONFIG_FILE="${STATE_DIR}/kubeconfig"

HOST="127.0.0.1"
APISERVER_PORT="${ZTHUMB_APISERVER_PORT:-16443}"
# shellcheck disable=SC2034 # read by the `up` phases of cluster.sh and real-node.sh
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
set_mode

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
