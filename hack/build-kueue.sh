#!/usr/bin/env bash
# Build Kueue's controller manager from its Go module, for the e2e tests that run a real Kueue
# beside the local control plane (tests/e2e/test_kueue.py), and keep its CRDs next to it.
#
# Output: ${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-v1.36.3/bin/kueue (beside kubectl, so
# `hack/cluster.sh bindir` finds it) and .../kueue-crds/*.yaml from the same module version.
# Idempotent: an existing binary is not rebuilt (delete it to force a rebuild).
# Env overrides: ZTHUMB_CACHE, KUEUE_VERSION.
set -euo pipefail

K8S_VERSION="v1.36.3"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE_DIR="${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-${K8S_VERSION}"
BIN_DIR="${CACHE_DIR}/bin"
CRD_DIR="${CACHE_DIR}/kueue-crds"
mkdir -p "${BIN_DIR}"

exec 7>"${CACHE_DIR}/.build-kueue.lock"
flock -w 3600 7 || { echo "[build-kueue] lock held for an hour; giving up" >&2; exit 1; }

log() { printf '[build-kueue] %s\n' "$*" >&2; }

export GOTOOLCHAIN=local CGO_ENABLED=0
unset GOFLAGS  # `go install module@version` builds with the module's own go.mod

if [[ -x "${BIN_DIR}/kueue" && -f "${CRD_DIR}/.version" && "$(cat "${CRD_DIR}/.version")" == "${KUEUE_VERSION}" ]]; then
  log "kueue ${KUEUE_VERSION} present, skipping"
  exit 0
fi

start="$(date +%s)"
log "building kueue ${KUEUE_VERSION} (sigs.k8s.io/kueue/cmd/kueue)"
GOBIN="${BIN_DIR}" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@${KUEUE_VERSION}"
module_dir="$(go env GOMODCACHE)/sigs.k8s.io/kueue@${KUEUE_VERSION}"
rm -rf "${CRD_DIR}"
mkdir -p "${CRD_DIR}"
# The plain CRDs: no conversion-webhook patches, so both served versions work without the
# webhook Service of a full install.
cp "${module_dir}"/config/components/crd/bases/*.yaml "${CRD_DIR}/"
chmod -R u+w "${CRD_DIR}"
echo "${KUEUE_VERSION}" >"${CRD_DIR}/.version"
log "built kueue ${KUEUE_VERSION} in $(($(date +%s) - start))s"
printf 'kueue %s build_seconds=%s\n' "${KUEUE_VERSION}" "$(($(date +%s) - start))" >>"${CACHE_DIR}/build-times.txt"
