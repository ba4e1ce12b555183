#!/usr/bin/env bash
# Runs the images that hack/images/build-images.sh exported the way the real node runs pods: imported
# with `ctr images import` into a containerd of our own (the node's binaries, `hack/cluster/cluster.sh
# bindir`; its root, state and socket in a throwaway directory), started by runc with a
# read-only root filesystem, uid/gid 10001, a tmpfs /tmp and bind-mounted volumes.
#
#   hack/images/test-images-containerd.sh
#
# Checks: the operator's CLI (and that it has no torch), the trainer writes the tiny SDXL
# model (torch + diffusers on the CPU), the server loads it and answers /readyz and a 64 px
# /generate on 127.0.0.1 (host network), and the helm-test image's curl reaches the server.
# Everything it started is stopped by pid and its directory removed.
#
# Env: ZTHUMB_CACHE [~/.cache/zthumb]  ZTHUMB_IMAGES_DIR [$ZTHUMB_CACHE/images]
#      ZTHUMB_IMAGE_REGISTRY [ghcr.io/zthumb]  ZTHUMB_IMAGE_TAG [pyproject version]
#      ZTHUMB_TEST_PORT [18089]  the server's port on 127.0.0.1
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_ROOT="${ZTHUMB_CACHE:-$HOME/.cache/zthumb}"
IMAGES_DIR="${ZTHUMB_IMAGES_DIR:-${CACHE_ROOT}/images}"
REGISTRY="${ZTHUMB_IMAGE_REGISTRY:-ghcr.io/zthumb}"
TAG="${ZTHUMB_IMAGE_TAG:-$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "${ROOT}/pyproject.toml")}"
PORT="${ZTHUMB_TEST_PORT:-18089}"
BIN_DIR="$("${ROOT}/hack/cluster/cluster.sh" bindir)"

# shellcheck source=hack/lib/log.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/log.sh"
LOG_TAG=images-test LOG_CLOCK=1 DIE_WORD=FAIL

for b in containerd containerd-shim-runc-v2 ctr; do
  [[ -x "${BIN_DIR}/${b}" ]] || die "${BIN_DIR}/${b} missing: build the node first (hack/cluster/build-node.sh)"
done
command -v runc >/dev/null || die "runc missing (apt-get install runc)"
for name in zthumb trainer operator helm-test; do
  [[ -s "${IMAGES_DIR}/${name}.tar" ]] || die "${IMAGES_DIR}/${name}.tar missing: hack/images/build-images.sh --no-import"
done

STATE="$(mktemp -d /tmp/zthumb-images-test.XXXXXX)"
SOCK="${STATE}/containerd.sock"
CONTAINERD_PID=""
cleanup() {
  local c=zt-test-server
  "${BIN_DIR}/ctr" -a "${SOCK}" -n k8s.io tasks kill -s SIGKILL "${c}" >/dev/null 2>&1 || true
  sleep 1
  "${BIN_DIR}/ctr" -a "${SOCK}" -n k8s.io tasks rm -f "${c}" >/dev/null 2>&1 || true
  "${BIN_DIR}/ctr" -a "${SOCK}" -n k8s.io containers rm "${c}" >/dev/null 2>&1 || true
  if [[ -n "${CONTAINERD_PID}" ]]; then
    kill "${CONTAINERD_PID}" 2>/dev/null || true
    wait "${CONTAINERD_PID}" 2>/dev/null || true
  fi
  # Nothing of ours may still be mounted before the directory goes.
  if grep -q " ${STATE}/" /proc/mounts; then
    grep " ${STATE}/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l || true
  fi
  rm -rf "${STATE}"
}
trap cleanup EXIT

cat >"${STATE}/config.toml" <<EOF
version = 3
root = "${STATE}/root"
state = "${STATE}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]
[grpc]
  address = "${SOCK}"
[ttrpc]
  address = "${STATE}/containerd-ttrpc.sock"
EOF
PATH="${BIN_DIR}:${PATH}" "${BIN_DIR}/containerd" --config "${STATE}/config.toml" >"${STATE}/containerd.log" 2>&1 &
CONTAINERD_PID=$!
wait_until 10 0.2 "containerd's socket" "${BIN_DIR}/ctr" -a "${SOCK}" version ||
  die "containerd did not start: $(tail -n 5 "${STATE}/containerd.log")"
log "containerd pid ${CONTAINERD_PID}, state ${STATE}"

ctr_() { PATH="${BIN_DIR}:${PATH}" "${BIN_DIR}/ctr" -a "${SOCK}" -n k8s.io "$@" 2> >(grep -v DEPRECATION >&2); }

t0=$SECONDS
for name in zthumb trainer operator helm-test; do
  ctr_ images import "${IMAGES_DIR}/${name}.tar" >/dev/null
done
log "imported the four archives in $((SECONDS - t0))s"

# Pod-like: read-only root, the images' user, a private /tmp.
RUN=(run --rm --read-only --user 10001:10001
  --mount "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777")

VOL="${STATE}/volume"
mkdir -p "${VOL}/lora"
chown -R 10001:10001 "${VOL}"

ctr_ "${RUN[@]}" "${REGISTRY}/operator:${TAG}" zt-test-op zthumb-operator --help >/dev/null ||
  die "operator: zthumb-operator --help"
if ctr_ "${RUN[@]}" "${REGISTRY}/operator:${TAG}" zt-test-op2 python -c 'import torch' 2>/dev/null; then
  die "operator: torch is importable"
fi
log "operator: CLI runs, no torch"

t0=$SECONDS
ctr_ "${RUN[@]}" --mount "type=bind,src=${VOL},dst=/data,options=rbind:rw" \
  "${REGISTRY}/trainer:${TAG}" zt-test-trainer zthumb-train tiny-model /data/tiny >/dev/null 2>&1 ||
  die "trainer: zthumb-train tiny-model"
[[ -s "${VOL}/tiny/tiny_sdxl.safetensors" ]] || die "trainer: no tiny model written"
log "trainer: wrote the tiny SDXL model ($((SECONDS - t0))s)"

t0=$SECONDS
ctr_ run -d --read-only --user 10001:10001 --net-host \
  --mount "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777" \
  --mount "type=bind,src=${VOL},dst=/models,options=rbind:rw" \
  --env ZTHUMB_HOST=127.0.0.1 --env "ZTHUMB_PORT=${PORT}" --env ZTHUMB_DEVICE=cpu \
  --env ZTHUMB_DTYPE=float32 --env ZTHUMB_MODEL_PATH=/models/tiny/tiny_sdxl.safetensors \
  --env ZTHUMB_MODEL_CONFIG=/models/tiny/diffusers \
  "${REGISTRY}/zthumb:${TAG}" zt-test-server >/dev/null
wait_until 180 2 "the server's /readyz" curl -fsS --max-time 3 "http://127.0.0.1:${PORT}/readyz" ||
  die "server: /readyz not ready after 180s"
log "server: ready ($((SECONDS - t0))s)"
code=$(curl -sS --max-time 120 -o "${STATE}/generate.json" -w '%{http_code}' \
  -H 'Content-Type: application/json' \
  -d '{"prompt":"a red square","steps":2,"width":64,"height":64,"num_images":1,"seed":0}' \
  "http://127.0.0.1:${PORT}/generate")
if [[ "${code}" != 200 ]] || ! grep -q '"images"' "${STATE}/generate.json"; then
  die "server: POST /generate returned HTTP ${code}: $(head -c 300 "${STATE}/generate.json")"
fi
log "server: POST /generate 200"

ctr_ "${RUN[@]}" --net-host "${REGISTRY}/helm-test:${TAG}" zt-test-helm \
  /bin/sh -ec "curl -fsS --max-time 5 http://127.0.0.1:${PORT}/healthz >/dev/null" ||
  die "helm-test: curl /healthz"
log "helm-test: curl reached the server"
log "all image checks passed"
