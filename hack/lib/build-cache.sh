# shellcheck shell=bash
# Sourced, never run: what the scripts that build into or read the local cluster's cache share
# (build-k8s.sh, build-node.sh, build-go-tool.sh, build-kueue.sh, cluster.sh). The Kubernetes
# version and the cache's layout are stated here once, so a version bump is one edit.

K8S_VERSION="v1.36.3"
# Staging modules (k8s.io/api, client-go, ...) are published as v0.<minor>.<patch>.
STAGING_VERSION="v0${K8S_VERSION#v1}"
CACHE_ROOT="${ZTHUMB_CACHE:-$HOME/.cache/zthumb}"
CACHE_DIR="${CACHE_ROOT}/k8s-${K8S_VERSION}"
BIN_DIR="${CACHE_DIR}/bin"

# build_setup NAME: start the build script NAME. Its own lock, so concurrent runs (CI and a
# developer, or two worktrees sharing the cache) never write the same binary; the wait is bounded
# (a cold build takes minutes, not an hour). Go builds with the installed toolchain (never a
# fetched one), as pure-Go static binaries (no libc coupling, faster links), with -mod=mod so
# wrapper modules get their go.sum filled in whatever the caller's GOFLAGS. A work dir, removed
# on exit, is in WORK_DIR.
build_setup() {
  BUILD_NAME="$1"
  mkdir -p "${BIN_DIR}"
  exec {BUILD_LOCK_FD}>"${CACHE_DIR}/.build-${BUILD_NAME}.lock"
  if ! flock -w 3600 "${BUILD_LOCK_FD}"; then
    log "another build-${BUILD_NAME} held ${CACHE_DIR}/.build-${BUILD_NAME}.lock for an hour; giving up"
    exit 1
  fi
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
  WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/zthumb-build-${BUILD_NAME}.XXXXXX")"
  trap 'rm -rf "${WORK_DIR}"' EXIT
}

log() { printf '[build-%s] %s\n' "${BUILD_NAME:-cache}" "$*" >&2; }

# have NAME: true when the binary is already cached (and executable).
have() { [[ -x "${BIN_DIR}/$1" ]]; }

# timed LABEL CMD...: run CMD, say how long it took and add that to build-times.txt.
timed() {
  local label="$1" start seconds
  shift
  start="$(date +%s)"
  "$@"
  seconds=$(($(date +%s) - start))
  log "built ${label} in ${seconds}s"
  printf '%s build_seconds=%s\n' "${label}" "${seconds}" >>"${CACHE_DIR}/build-times.txt"
}
