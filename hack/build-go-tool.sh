#!/usr/bin/env bash
# Build one Go command from its module at a pinned version, the way the test tools beside the
# control plane are built (hack/build-kueue.sh, hack/build-versitygw.sh):
#
#   hack/build-go-tool.sh NAME PACKAGE VERSION     e.g. kueue sigs.k8s.io/kueue/cmd/kueue v0.17.0
#
# Output: ${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-v1.36.3/bin/NAME (beside kubectl, so
# `hack/cluster.sh bindir` finds it) and bin/.NAME-version. Idempotent: a binary of this version
# is kept; another version is rebuilt.
set -euo pipefail

NAME=$1 PACKAGE=$2 VERSION=$3
K8S_VERSION="v1.36.3"
CACHE_DIR="${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-${K8S_VERSION}"
BIN_DIR="${CACHE_DIR}/bin"
STAMP="${BIN_DIR}/.${NAME}-version"
mkdir -p "${BIN_DIR}"

exec 6>"${CACHE_DIR}/.build-${NAME}.lock"
flock -w 3600 6 || { echo "[build-${NAME}] lock held for an hour; giving up" >&2; exit 1; }

log() { printf '[build-%s] %s\n' "${NAME}" "$*" >&2; }

if [[ -x "${BIN_DIR}/${NAME}" && -f "${STAMP}" && "$(cat "${STAMP}")" == "${VERSION}" ]]; then
  log "${NAME} ${VERSION} present, skipping"
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0
unset GOFLAGS  # `go install module@version` builds with the module's own go.mod
start="$(date +%s)"
log "building ${NAME} ${VERSION} (${PACKAGE})"
GOBIN="${BIN_DIR}" go install -trimpath -ldflags "-s -w" "${PACKAGE}@${VERSION}"
echo "${VERSION}" >"${STAMP}"
log "built ${NAME} ${VERSION} in $(($(date +%s) - start))s"
printf '%s %s build_seconds=%s\n' "${NAME}" "${VERSION}" "$(($(date +%s) - start))" >>"${CACHE_DIR}/build-times.txt"
