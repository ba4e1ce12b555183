# shellcheck shell=bash
# Sourced, never run: what the scripts that build into or read the local cluster's cache share
# (build-k8s.sh, build-node.sh, build-go-tool.sh, build-kueue.sh, cluster.sh). The Kubernetes
# version and the cache's layout are stated here once, so a version bump is one edit.
# Needs hack/lib/log.sh sourced first (log, timed).

K8S_VERSION="v1.36.3"
# Staging modules (k8s.io/api, client-go, ...) are published as v0.<minor>.<patch>.
# shellcheck disable=SC2034 # read by build-k8s.sh and build-node.sh, which source this file
STAGING_VERSION="v0${K8S_VERSION#v1}"
# shellcheck disable=SC2034 # read by log (hack/lib/log.sh), which this file does not source
LOG_TAG="build-cache"
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
  # shellcheck disable=SC2034 # read by log (hack/lib/log.sh)
  LOG_TAG="build-${BUILD_NAME}"
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

# have NAME: true when the binary is already cached (and executable).
have() { [[ -x "${BIN_DIR}/$1" ]]; }

# timed_build LABEL CMD...: run CMD, log "built LABEL in Ns" and add that to build-times.txt.
timed_build() {
  local label="$1"
  shift
  timed "built ${label}" "$@"
  printf '%s build_seconds=%s\n' "${label}" "${TIMED_SECONDS}" >>"${CACHE_DIR}/build-times.txt"
}
