#!/usr/bin/env bash
# Build the local Kubernetes control plane used by the e2e tests from Go
# modules (never downloaded as release binaries: hack/cluster/README-cluster.md).
#
# Output: ${ZTHUMB_CACHE:-$HOME/.cache/zthumb}/k8s-v1.36.3/bin
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#   kubelet, kube-proxy, kwok, kwokctl, helm   (+ versions.txt one level up),
#   kueue (hack/cluster/build-kueue.sh, with its CRDs in ../kueue-crds), versitygw (hack/cluster/build-versitygw.sh)
# and then runs hack/cluster/build-node.sh for the rest of the real node (containerd,
# CoreDNS, the storage provisioner, the pause and busybox images, Debian
# packages), so this one script builds everything `make test` needs.
#
# Idempotent: a binary that already exists is not rebuilt. Delete it (or the
# whole cache dir) to force a rebuild.
#
# Env overrides: ZTHUMB_CACHE, ETCD_VERSION (default: newest v3.6.* on the Go
# proxy), KWOK_VERSION, HELM_VERSION.
set -euo pipefail

# shellcheck source=hack/lib/log.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/log.sh"
# shellcheck source=hack/lib/build-cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/build-cache.sh"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
build_setup k8s

# gomod_file MODULE@VERSION: path of the downloaded go.mod of that module.
gomod_file() {
  go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}

# ---------------------------------------------------------------------------
# etcd: server/v3 has replace directives (../api, ...), so `go install @v`
# refuses it. A two-file wrapper module calling etcdmain.Main sidesteps that:
# replace directives of dependencies are ignored.
# ---------------------------------------------------------------------------
resolve_etcd_version() {
  if [[ -n "${ETCD_VERSION:-}" ]]; then
    echo "${ETCD_VERSION}"
    return
  fi
  # Newest v3.6.* the proxy serves (the list is semver-sorted ascending).
  go list -m -versions go.etcd.io/etcd/server/v3 | tr ' ' '\n' | grep -E '^v3\.6\.[0-9]+$' | tail -n1
}

build_etcd() {
  local version="$1" dir="${WORK_DIR}/etcd"
  mkdir -p "${dir}"
  cat >"${dir}/go.mod" <<EOF
module zthumb.local/etcdwrap

go 1.26.0

require go.etcd.io/etcd/server/v3 ${version}
EOF
  cat >"${dir}/main.go" <<'EOF'
// Command etcd is a thin wrapper so etcd can be built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "${dir}" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "${BIN_DIR}/etcd" .)
}

# ---------------------------------------------------------------------------
# Kubernetes: k8s.io/kubernetes replaces every staging module with
# ./staging/src/k8s.io/<name>. A wrapper module must re-state those replaces
# pointing at the published v0.x.y staging versions. We GENERATE them from the
# release's own go.mod so the list can never drift from the release.
# ---------------------------------------------------------------------------
k8s_replace_lines() {
  local gomod="$1"
  python3 "$(dirname "${BASH_SOURCE[0]}")/k8s_replaces.py" "${gomod}" "${STAGING_VERSION}"
}

build_k8s() {
  local dir="${WORK_DIR}/k8s" gomod commit build_date pkgs=() name
  for name in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/${name}"); done
  mkdir -p "${dir}"
  gomod="$(gomod_file "k8s.io/kubernetes@${K8S_VERSION}")"
  {
    printf 'module zthumb.local/k8swrap\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\n' "${K8S_VERSION}"
    k8s_replace_lines "${gomod}"
  } >"${dir}/go.mod"
  log "generated $(grep -c '^replace ' "${dir}/go.mod") replace lines from ${gomod}"

  # Commit hash, when the proxy records the origin (it does for recent tags).
  commit="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" |
    python3 -c 'import json,sys; print((json.load(sys.stdin).get("Origin") or {}).get("Hash",""))')"
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local ldflags="-s -w" pkgpath
  # Both version packages: component-base feeds /version on the server,
  # client-go feeds kubectl's client version. Helm's kubeVersion check needs
  # a semver gitVersion, the default "v0.0.0-master+$Format..." would fail.
  for pkgpath in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkgpath}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${pkgpath}.gitMajor=1"
    ldflags+=" -X ${pkgpath}.gitMinor=${minor}"
    ldflags+=" -X ${pkgpath}.gitCommit=${commit}"
    ldflags+=" -X ${pkgpath}.gitTreeState=clean"
    ldflags+=" -X ${pkgpath}.buildDate=${build_date}"
  done

  # `go get` on the packages fills go.mod/go.sum with exactly what they need
  # (cheaper than `go mod tidy`, which also resolves every test dependency).
  (cd "${dir}" && go get "${pkgs[@]/%/@${K8S_VERSION}}")
  # One go build for all binaries: shared packages compile once.
  (cd "${dir}" && go build -trimpath -ldflags "${ldflags}" -o "${BIN_DIR}/" "${pkgs[@]}")
}

# kwok and helm have no replace directives, so plain `go install` works.
build_kwok() {
  local pkgs=() name
  for name in "$@"; do pkgs+=("sigs.k8s.io/kwok/cmd/${name}@${KWOK_VERSION}"); done
  GOBIN="${BIN_DIR}" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}" "${pkgs[@]}"
}

# kwok itself ships no default stages (only kwokctl embeds them), so copy the
# release's own "fast" Stage manifests next to the binaries for cluster.sh:
# node-initialize + lease heartbeat keep nodes Ready, pod-ready/-complete/
# -delete make pods Running and Job pods Succeeded.
copy_kwok_stages() {
  local dest="${CACHE_DIR}/kwok-stages" src f
  local files=(
    node/fast/node-initialize.yaml
    node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
    pod/fast/pod-ready.yaml
    pod/fast/pod-complete.yaml
    pod/fast/pod-delete.yaml
  )
  if [[ -d "${dest}" ]] && (($(find "${dest}" -name '*.yaml' | wc -l) == ${#files[@]})); then
    return
  fi
  src="$(go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/kustomize/stage"
  mkdir -p "${dest}"
  for f in "${files[@]}"; do
    install -m 0644 "${src}/${f}" "${dest}/$(basename "${f}")"
  done
  log "copied kwok ${KWOK_VERSION} stages to ${dest}"
}

build_helm() {
  GOBIN="${BIN_DIR}" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
}

main() {
  local etcd_version missing
  log "cache dir: ${CACHE_DIR} ($(go version))"

  if have etcd; then
    log "etcd present, skipping"
    etcd_version="$("${BIN_DIR}/etcd" --version | awk '/etcd Version/ {print "v"$3}')"
  else
    etcd_version="$(resolve_etcd_version)"
    log "building etcd ${etcd_version}"
    timed_build "etcd ${etcd_version}" build_etcd "${etcd_version}"
  fi

  missing=()
  for b in kwok kwokctl; do have "${b}" || missing+=("${b}"); done
  if ((${#missing[@]})); then
    log "building ${missing[*]} ${KWOK_VERSION}"
    timed_build "${missing[*]} ${KWOK_VERSION}" build_kwok "${missing[@]}"
  else
    log "kwok, kwokctl present, skipping"
  fi

  copy_kwok_stages

  missing=()
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    have "${b}" || missing+=("${b}")
  done
  if ((${#missing[@]})); then
    log "building ${missing[*]} ${K8S_VERSION} (one go build; slow on few cores)"
    timed_build "${missing[*]} ${K8S_VERSION}" build_k8s "${missing[@]}"
  else
    log "kubernetes binaries present, skipping"
  fi

  if have helm; then
    log "helm present, skipping"
  else
    log "building helm ${HELM_VERSION}"
    timed_build "helm ${HELM_VERSION}" build_helm
  fi

  # Record what is in the cache. Versions come from the binaries themselves
  # where they report one, so the file stays true even across partial rebuilds.
  {
    echo "# generated by hack/cluster/build-k8s.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(go version | awk '{print $3}')"
    echo "etcd=${etcd_version}"
    echo "kubernetes=${K8S_VERSION}"
    echo "kube-apiserver=$("${BIN_DIR}/kube-apiserver" --version | awk '{print $2}')"
    echo "kubectl=$("${BIN_DIR}/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
    echo "kwok=${KWOK_VERSION}"
    echo "helm=$("${BIN_DIR}/helm" version --template '{{.Version}}')"
  } >"${CACHE_DIR}/versions.txt"
  log "done; versions:"
  sed 's/^/  /' "${CACHE_DIR}/versions.txt" >&2

  # A real Kueue for tests/e2e/test_kueue.py.
  "$(dirname "${BASH_SOURCE[0]}")/build-kueue.sh"
  # A real S3-compatible server for the dataset-source tests.
  "$(dirname "${BASH_SOURCE[0]}")/build-versitygw.sh"

  # The real node's other parts. Skipped with ZTHUMB_REAL_NODE=0.
  if [[ "${ZTHUMB_REAL_NODE:-1}" != 0 ]]; then
    "$(dirname "${BASH_SOURCE[0]}")/build-node.sh"
  fi
}

main "$@"
