#!/usr/bin/env bash
# Build Kueue's controller manager from its Go module, for the e2e tests that run a real Kueue
# beside the local control plane (tests/e2e/test_kueue.py), and keep its CRDs next to it.
#
# Output: bin/kueue (hack/lib/build-go-tool.sh) and ${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-v1.36.3/
# kueue-crds/*.yaml from the same module version. Env override: ZTHUMB_CACHE, KUEUE_VERSION.
set -euo pipefail

# shellcheck source=hack/lib/log.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/log.sh"
# shellcheck source=hack/lib/build-cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/build-cache.sh"
LOG_TAG=build-kueue
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CRD_DIR="${CACHE_DIR}/kueue-crds"

"$(dirname "${BASH_SOURCE[0]}")/../lib/build-go-tool.sh" kueue sigs.k8s.io/kueue/cmd/kueue "${KUEUE_VERSION}"
if [[ -f "${CRD_DIR}/.version" && "$(cat "${CRD_DIR}/.version")" == "${KUEUE_VERSION}" ]]; then
  exit 0
fi
module_dir="$(GOFLAGS='' go env GOMODCACHE)/sigs.k8s.io/kueue@${KUEUE_VERSION}"
# The binary may be cached while the module cache was cleaned: fetch the module's files again.
[[ -d "${module_dir}" ]] || (cd / && GOFLAGS='' GOTOOLCHAIN=local go mod download "sigs.k8s.io/kueue@${KUEUE_VERSION}")
rm -rf "${CRD_DIR}"
mkdir -p "${CRD_DIR}"
# The plain CRDs: no conversion-webhook patches, so both served versions work without the
# webhook Service of a full install.
cp "${module_dir}"/config/components/crd/bases/*.yaml "${CRD_DIR}/"
chmod -R u+w "${CRD_DIR}"
echo "${KUEUE_VERSION}" >"${CRD_DIR}/.version"
log "CRDs of kueue ${KUEUE_VERSION} in ${CRD_DIR}"
