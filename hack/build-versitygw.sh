#!/usr/bin/env bash
# Build versitygw (Versity S3 Gateway, Apache-2.0) from its Go module: a real S3-compatible server
# (SigV4-authenticated, POSIX backend) that tests/unit/trainer/test_dataset_sources.py starts on
# loopback to fetch spec.dataset.source.s3 datasets from. MinIO's server is AGPL, so not it.
#
# Output: ${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-v1.36.3/bin/versitygw (beside kubectl, so
# `hack/cluster.sh bindir` finds it). Idempotent: an existing binary of this version is kept.
# Env overrides: ZTHUMB_CACHE, VERSITYGW_VERSION.
set -euo pipefail

K8S_VERSION="v1.36.3"
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
CACHE_DIR="${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-${K8S_VERSION}"
BIN_DIR="${CACHE_DIR}/bin"
STAMP="${BIN_DIR}/.versitygw-version"
mkdir -p "${BIN_DIR}"

exec 6>"${CACHE_DIR}/.build-versitygw.lock"
flock -w 3600 6 || { echo "[build-versitygw] lock held for an hour; giving up" >&2; exit 1; }

log() { printf '[build-versitygw] %s\n' "$*" >&2; }

if [[ -x "${BIN_DIR}/versitygw" && -f "${STAMP}" && "$(cat "${STAMP}")" == "${VERSITYGW_VERSION}" ]]; then
  log "versitygw ${VERSITYGW_VERSION} present, skipping"
  exit 0
fi

export GOTOOLCHAIN=local CGO_ENABLED=0
unset GOFLAGS  # `go install module@version` builds with the module's own go.mod
start="$(date +%s)"
log "building versitygw ${VERSITYGW_VERSION}"
GOBIN="${BIN_DIR}" go install -trimpath -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}"
echo "${VERSITYGW_VERSION}" >"${STAMP}"
log "built versitygw ${VERSITYGW_VERSION} in $(($(date +%s) - start))s"
printf 'versitygw %s build_seconds=%s\n' "${VERSITYGW_VERSION}" "$(($(date +%s) - start))" >>"${CACHE_DIR}/build-times.txt"
