#!/usr/bin/env bash
# Build one Go command from its module at a pinned version, the way the test tools beside the
# control plane are built (hack/cluster/build-kueue.sh, hack/cluster/build-versitygw.sh):
#
#   hack/lib/build-go-tool.sh NAME PACKAGE VERSION     e.g. kueue sigs.k8s.io/kueue/cmd/kueue v0.17.0
#
# Output: ${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-v1.36.3/bin/NAME (beside kubectl, so
# `hack/cluster/cluster.sh bindir` finds it) and bin/.NAME-version. Idempotent: a binary of this version
# is kept; another version is rebuilt.
set -euo pipefail

NAME=$1 PACKAGE=$2 VERSION=$3
# shellcheck source=hack/lib/log.sh
source "$(dirname "${BASH_SOURCE[0]}")/log.sh"
# shellcheck source=hack/lib/build-cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-cache.sh"
STAMP="${BIN_DIR}/.${NAME}-version"
build_setup "${NAME}"

if [[ -x "${BIN_DIR}/${NAME}" && -f "${STAMP}" && "$(cat "${STAMP}")" == "${VERSION}" ]]; then
  log "${NAME} ${VERSION} present, skipping"
  exit 0
fi

unset GOFLAGS  # `go install module@version` builds with the module's own go.mod
log "building ${NAME} ${VERSION} (${PACKAGE})"
timed_build "${NAME} ${VERSION}" env GOBIN="${BIN_DIR}" go install -trimpath -ldflags "-s -w" "${PACKAGE}@${VERSION}"
echo "${VERSION}" >"${STAMP}"
