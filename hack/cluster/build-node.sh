#!/usr/bin/env bash
# Build the parts of the local cluster's REAL node that are not Kubernetes
# binaries (kubelet and kube-proxy come from hack/cluster/build-k8s.sh, which calls
# this script at its end):
#
#   containerd, containerd-shim-runc-v2, ctr   github.com/containerd/containerd/v2
#   coredns                                    a small main importing only the
#                                              plugins the cluster needs
#   zthumb-hostpath-provisioner                hack/cluster/node/hostpath-provisioner.go on
#                                              sigs.k8s.io/sig-storage-lib-external-provisioner
#   images/pause.tar, images/busybox.tar       OCI archives built with buildah:
#                                              pause = FROM scratch + catatonit,
#                                              busybox = FROM scratch + busybox-static
#
# and, when running as root, installs the Debian packages the node needs
# (runc, catatonit, containernetworking-plugins, nftables, iptables, conntrack,
# buildah, busybox-static) if they are missing.
#
# Output: ${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-v1.36.3/{bin,images}, with
# node-versions.txt and build-times.txt next to them. Idempotent: whatever
# exists is not rebuilt (delete it to force a rebuild).
#
# Env overrides: ZTHUMB_CACHE, CONTAINERD_VERSION, COREDNS_VERSION,
# PROVISIONER_LIB_VERSION, ZTHUMB_SKIP_APT=1 (never call apt-get).
set -euo pipefail

# shellcheck source=hack/lib/log.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/log.sh"
# shellcheck source=hack/lib/build-cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/build-cache.sh"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.3.7}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
PROVISIONER_LIB_VERSION="${PROVISIONER_LIB_VERSION:-v13.0.0}"
# Image names the node and the tests use; cluster.sh imports both at `up`.
PAUSE_IMAGE="localhost/zthumb/pause:3.10"
BUSYBOX_IMAGE="localhost/zthumb/busybox:1.35"
IMAGE_DIR="${CACHE_DIR}/images"
# A lock of its own: build-k8s.sh holds its lock while it calls this script.
build_setup node
mkdir -p "${IMAGE_DIR}"

# ---------------------------------------------------------------------------
# Debian packages. CI machines are fresh: install what is missing.
# ---------------------------------------------------------------------------
NODE_PACKAGES=(runc catatonit containernetworking-plugins nftables iptables conntrack buildah busybox-static)

missing_packages() {
  local p
  for p in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "${p}" 2>/dev/null | grep -q '^install ok installed$' || echo "${p}"
  done
}

ensure_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || return 0
  if [[ "${ZTHUMB_SKIP_APT:-0}" == 1 ]]; then
    log "missing Debian packages ${missing[*]} (ZTHUMB_SKIP_APT=1: not installing)"
    return 1
  fi
  if ((EUID != 0)); then
    log "missing Debian packages ${missing[*]}; not root, so not installing (the real node needs root anyway)"
    return 1
  fi
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# ---------------------------------------------------------------------------
# containerd: its go.mod has no replace directives, so `go install @v` works.
# ---------------------------------------------------------------------------
build_containerd() {
  local mod="github.com/containerd/containerd/v2"
  GOBIN="${BIN_DIR}" go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X ${mod}/version.Version=${CONTAINERD_VERSION} -X ${mod}/version.Package=${mod}" \
    "${mod}/cmd/containerd@${CONTAINERD_VERSION}" \
    "${mod}/cmd/containerd-shim-runc-v2@${CONTAINERD_VERSION}" \
    "${mod}/cmd/ctr@${CONTAINERD_VERSION}"
}

# ---------------------------------------------------------------------------
# CoreDNS: the stock binary links ~60 plugins (cloud DNS providers, etcd,
# forward, ...). A wrapper main with our own directive list pulls in only
# these: bind, errors, health, ready, log, cache, kubernetes. No forward:
# nothing outside the machine is reachable, and names outside the cluster
# zones get REFUSED at once instead of timing out.
# ---------------------------------------------------------------------------
build_coredns() {
  local dir="${WORK_DIR}/coredns"
  mkdir -p "${dir}"
  cat >"${dir}/go.mod" <<EOF
module zthumb.local/corednswrap

go 1.26.0

require github.com/coredns/coredns ${COREDNS_VERSION}
EOF
  cat >"${dir}/main.go" <<'EOF'
// Command coredns is CoreDNS with only the plugins the local cluster needs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// Same relative order as CoreDNS's own plugin.cfg.
var directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
EOF
  (cd "${dir}" && go mod tidy && go build -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
    -o "${BIN_DIR}/coredns" .)
}

# The storage provisioner: our own small main (see its header for why not
# rancher's local-path-provisioner). client-go is pinned to the cluster's
# staging version, so the Go build cache shares packages with the k8s build.
build_provisioner() {
  local dir="${WORK_DIR}/provisioner" src
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/node/hostpath-provisioner.go"
  mkdir -p "${dir}"
  cp "${src}" "${dir}/main.go"
  cat >"${dir}/go.mod" <<EOF
module zthumb.local/hostpath-provisioner

go 1.26.0

require (
	sigs.k8s.io/sig-storage-lib-external-provisioner/v13 ${PROVISIONER_LIB_VERSION}
	k8s.io/api ${STAGING_VERSION}
	k8s.io/apimachinery ${STAGING_VERSION}
	k8s.io/client-go ${STAGING_VERSION}
)
EOF
  (cd "${dir}" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "${BIN_DIR}/zthumb-hostpath-provisioner" .)
}

# ---------------------------------------------------------------------------
# Images, as OCI archives that `hack/cluster/cluster.sh import` (ctr images import)
# loads into the node's containerd. buildah keeps its storage private to this
# build (vfs driver, chroot isolation) and it is removed afterwards.
# ---------------------------------------------------------------------------
buildah_private() {
  buildah --root "${WORK_DIR}/buildah/root" --runroot "${WORK_DIR}/buildah/run" \
    --storage-driver vfs "$@"
}

# build_scratch_image NAME ARCHIVE ROOTFS_TAR ENTRYPOINT_JSON CMD_JSON
build_scratch_image() {
  local name="$1" archive="$2" rootfs="$3" entrypoint="$4" cmd="$5" ctr
  ctr="$(buildah_private from --pull=never scratch)"
  buildah_private add --quiet "${ctr}" "${rootfs}" / >/dev/null
  buildah_private config --entrypoint "${entrypoint}" --cmd "${cmd}" \
    --label org.opencontainers.image.source=zthumb-hack-build-node "${ctr}"
  buildah_private commit -q "${ctr}" "${name}" >/dev/null
  rm -f "${archive}.tmp"
  buildah_private push -q "${name}" "oci-archive:${archive}.tmp:${name}"
  buildah_private rm "${ctr}" >/dev/null
  mv "${archive}.tmp" "${archive}"
}

build_pause_image() {
  local root="${WORK_DIR}/pause-rootfs"
  mkdir -p "${root}"
  install -m 0755 /usr/bin/catatonit "${root}/pause"
  tar -C "${root}" -cf "${WORK_DIR}/pause.tar" .
  # catatonit -P: pause mode (sleep until signalled, reap nothing).
  build_scratch_image "${PAUSE_IMAGE}" "${IMAGE_DIR}/pause.tar" "${WORK_DIR}/pause.tar" \
    '["/pause", "-P"]' '[]'
}

build_busybox_image() {
  local root="${WORK_DIR}/busybox-rootfs" applet
  mkdir -p "${root}/bin" "${root}/tmp" "${root}/etc"
  chmod 1777 "${root}/tmp"
  install -m 0755 /bin/busybox "${root}/bin/busybox"
  # Busybox-static is statically linked; every applet is a symlink to it.
  for applet in $(/bin/busybox --list); do
    [[ "${applet}" == busybox ]] || ln -sf busybox "${root}/bin/${applet}"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"${root}/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"${root}/etc/group"
  tar -C "${root}" -cf "${WORK_DIR}/busybox.tar" .
  build_scratch_image "${BUSYBOX_IMAGE}" "${IMAGE_DIR}/busybox.tar" "${WORK_DIR}/busybox.tar" \
    '[]' '["/bin/sh"]'
}

main() {
  local packages_ok=1
  log "cache dir: ${CACHE_DIR} ($(go version))"
  ensure_packages || packages_ok=0

  if have containerd && have containerd-shim-runc-v2 && have ctr; then
    log "containerd present, skipping"
  else
    log "building containerd ${CONTAINERD_VERSION} (containerd, containerd-shim-runc-v2, ctr)"
    timed_build "containerd ${CONTAINERD_VERSION}" build_containerd
  fi

  if have coredns; then
    log "coredns present, skipping"
  else
    log "building coredns ${COREDNS_VERSION} (bind errors health ready log cache kubernetes)"
    timed_build "coredns ${COREDNS_VERSION}" build_coredns
  fi

  if have zthumb-hostpath-provisioner; then
    log "zthumb-hostpath-provisioner present, skipping"
  else
    log "building zthumb-hostpath-provisioner (sig-storage-lib-external-provisioner ${PROVISIONER_LIB_VERSION})"
    timed_build "zthumb-hostpath-provisioner ${PROVISIONER_LIB_VERSION}" build_provisioner
  fi

  if ((packages_ok)) && ((EUID == 0)); then
    if [[ -f "${IMAGE_DIR}/pause.tar" ]]; then
      log "pause image present, skipping"
    else
      timed_build "image ${PAUSE_IMAGE}" build_pause_image
    fi
    if [[ -f "${IMAGE_DIR}/busybox.tar" ]]; then
      log "busybox image present, skipping"
    else
      timed_build "image ${BUSYBOX_IMAGE}" build_busybox_image
    fi
  else
    log "skipping the node images (need root and the Debian packages above)"
  fi

  {
    echo "# generated by hack/cluster/build-node.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "containerd=${CONTAINERD_VERSION}"
    echo "coredns=${COREDNS_VERSION}"
    echo "sig-storage-lib-external-provisioner=${PROVISIONER_LIB_VERSION}"
    echo "pause-image=${PAUSE_IMAGE}"
    echo "busybox-image=${BUSYBOX_IMAGE}"
    local p
    for p in runc catatonit containernetworking-plugins busybox-static; do
      echo "${p}=$(dpkg-query -W -f='${Version}' "${p}" 2>/dev/null || echo missing)"
    done
  } >"${CACHE_DIR}/node-versions.txt"
  log "done; versions:"
  sed 's/^/  /' "${CACHE_DIR}/node-versions.txt" >&2
}

main "$@"
