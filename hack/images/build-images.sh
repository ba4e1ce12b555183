#!/usr/bin/env bash
# Build the project's container images for real, from its own Dockerfiles, without Docker or a
# registry (hack/images/README-images.md: a Debian base made with mmdebstrap, buildah bud, OCI archives):
#
#   1. a Debian bookworm base made by `mmdebstrap --variant=minbase`, the local stand-in for the
#      Dockerfiles' default base (debian:bookworm-<date>-slim, pinned by digest, which no registry
#      here can serve), cached as a tarball and turned into a local image;
#   2. `buildah bud --pull=never --isolation=chroot` of every Dockerfile with that base as its
#      BASE_IMAGE (TORCH_BASE for zthumb and trainer): the Dockerfiles' own recipe, nothing else
#      (the packages, Python, the venv are the Dockerfiles' own, as for `docker build`);
#   3. `buildah push IMG oci-archive:FILE:IMG` into $ZTHUMB_IMAGES_DIR/*.tar;
#   4. `ctr -n k8s.io images import FILE` into the real node's containerd, when it is up.
#
#   hack/images/build-images.sh [options] [IMAGE...]   build, verify, export and import (default: all)
#   hack/images/build-images.sh import [IMAGE...]      only import the exported archives
#   hack/images/build-images.sh layers                 show and check the layers the archives share
#   hack/images/build-images.sh list                   print "IMAGE REF ARCHIVE" per image
#   hack/images/build-images.sh storage                print buildah's global options for the
#                                                      project's storage, one word a line
#                                                      (hack/images/image_checks.py runs them)
#
# IMAGE is one of: zthumb trainer operator helm-test (torch-base, the server's and trainer's
# shared base, is built whenever one of them needs it; it is not exported on its own).
#
# Options:
#   --no-import      do not import into containerd
#   --force          rebuild even when the inputs did not change
#   --no-verify      skip the smoke tests inside the freshly built images
#   --refresh-base   rebuild the Debian base tarball (picks up Debian security updates)
#
# Every image carries the label io.zthumb.inputs = a hash of its inputs (Dockerfile, build
# args, the base image's id, every file its COPY and bind-mount lines name, this script's
# recipe version). An image whose hash is unchanged is not rebuilt, an archive that already
# holds it is not rewritten, and an image containerd already has with the same manifest digest
# is not imported again.
#
# Env (defaults in brackets):
#   ZTHUMB_CACHE [~/.cache/zthumb]           ZTHUMB_IMAGES_DIR [$ZTHUMB_CACHE/images]
#   ZTHUMB_CLUSTER_DIR [$ZTHUMB_CACHE/cluster]
#   ZTHUMB_CONTAINERD_SOCK [$ZTHUMB_CLUSTER_DIR/node/run/containerd.sock]
#   ZTHUMB_CTR [ctr on PATH, else $ZTHUMB_CACHE/*/bin/ctr]   the containerd client
#   ZTHUMB_CTR_NAMESPACE [k8s.io]
#   ZTHUMB_IMAGE_REGISTRY [ghcr.io/zthumb]   ZTHUMB_IMAGE_TAG [the version in pyproject.toml]
#   ZTHUMB_IMAGE_COMPRESSION [gzip]  gzip | zstd for the archives' layers (buildah 1.28 always
#       compresses OCI archives; its --disable-compression has no effect there). gzip output is
#       deterministic: the shared torch layer has the same digest in both archives (checked).
#   ZTHUMB_BUILDAH_DRIVER [overlay; vfs when the storage was made with vfs]
#   ZTHUMB_WHEELHOUSE [$ZTHUMB_IMAGES_DIR/wheels]  every pinned wheel, `pip download`ed once
#       on the host; the builds install from it offline (mounted, never committed)
#   ZTHUMB_DEBIAN_MIRROR [http://deb.debian.org/debian]
#   ZTHUMB_DEBIAN_SECURITY_MIRROR [http://deb.debian.org/debian-security]
#   ZTHUMB_TRAINER_EXTRA_PIP [""]  e.g. "bitsandbytes==<version>" (build arg EXTRA_PIP)
#   ZTHUMB_BUILD_CA_BUNDLE [/etc/ssl/certs/ca-certificates.crt]  the CA bundle pip trusts
#       during the build (mounted, not committed), for networks with a TLS-intercepting proxy
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_ROOT="${ZTHUMB_CACHE:-$HOME/.cache/zthumb}"
IMAGES_DIR="${ZTHUMB_IMAGES_DIR:-${CACHE_ROOT}/images}"
CLUSTER_DIR="${ZTHUMB_CLUSTER_DIR:-${CACHE_ROOT}/cluster}"
CONTAINERD_SOCK="${ZTHUMB_CONTAINERD_SOCK:-${CLUSTER_DIR}/node/run/containerd.sock}"
CTR_NAMESPACE="${ZTHUMB_CTR_NAMESPACE:-k8s.io}"
REGISTRY="${ZTHUMB_IMAGE_REGISTRY:-ghcr.io/zthumb}"
COMPRESSION="${ZTHUMB_IMAGE_COMPRESSION:-gzip}"
DEBIAN_MIRROR="${ZTHUMB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${ZTHUMB_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
TRAINER_EXTRA_PIP="${ZTHUMB_TRAINER_EXTRA_PIP:-}"
BUILD_CA_BUNDLE="${ZTHUMB_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
WHEELHOUSE="${ZTHUMB_WHEELHOUSE:-${IMAGES_DIR}/wheels}"
STORAGE_DIR="${IMAGES_DIR}/storage"
RUN_DIR="${IMAGES_DIR}/run"
# Bump when a change here alters what an image contains (build flags, base recipe).
RECIPE_VERSION=2
INPUTS_LABEL="io.zthumb.inputs"

# shellcheck source=hack/lib/log.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/log.sh"
LOG_TAG=images LOG_CLOCK=1

TAG="${ZTHUMB_IMAGE_TAG:-$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "${ROOT}/pyproject.toml")}"

# name -> Dockerfile, image reference. torch-base is internal (FROM of zthumb and trainer).
declare -A DOCKERFILE=(
  [torch-base]=images/base/Dockerfile
  [zthumb]=images/zthumb/Dockerfile
  [trainer]=images/trainer/Dockerfile
  [operator]=operator/Dockerfile
  [helm-test]=images/helm-test/Dockerfile
)
declare -A REF=(
  [torch-base]="${REGISTRY}/torch-base:${TAG}"
  [zthumb]="${REGISTRY}/zthumb:${TAG}"
  [trainer]="${REGISTRY}/trainer:${TAG}"
  [operator]="${REGISTRY}/operator:${TAG}"
  [helm-test]="${REGISTRY}/helm-test:${TAG}"
)
EXPORTED=(zthumb trainer operator helm-test)

# --- tools ------------------------------------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

storage_driver() {
  if [[ -n "${ZTHUMB_BUILDAH_DRIVER:-}" ]]; then
    echo "${ZTHUMB_BUILDAH_DRIVER}"
  elif [[ -d "${STORAGE_DIR}/vfs" && ! -d "${STORAGE_DIR}/overlay" ]]; then
    echo vfs
  else
    echo overlay
  fi
}

# buildah on the project's own storage (never the machine's default one).
bh() {
  buildah --root "${STORAGE_DIR}" --runroot "${RUN_DIR}" --storage-driver "${DRIVER}" "$@"
}

image_id() { bh inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
# An image's unpacked size in bytes (buildah prints it rounded, in SI units).
image_size_bytes() {
  bh images --json "$1" | python3 -c '
import json, sys
number, unit = json.load(sys.stdin)[0]["size"].split()
print(int(float(number) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]))'
}

# An export stages the largest layer uncompressed and every layer compressed in $TMPDIR, then
# writes the archive (seen: a 6.0 GB uncompressed torch layer beside its 3.3 GB archive). Refuse
# before starting rather than fail half-way with ENOSPC.
ensure_free_space() {
  local name=$1 need=$2 avail
  avail=$(df --output=avail -B1 "${IMAGES_DIR}" | tail -1)
  if ((avail < need)); then
    die "${name}: exporting needs about $((need / 1000000)) MB free on the disk of ${IMAGES_DIR}," \
      "it has $((avail / 1000000)) MB (df -h ${IMAGES_DIR}; leftovers of killed runs in /tmp or /var/tmp are the usual culprits)"
  fi
}

image_label() {
  bh inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

# --- the Debian base --------------------------------------------------------------------------

# The Debian release of the Dockerfiles' default base (debian:bookworm-<date>-slim); nothing
# beyond minbase, as in that image: the Dockerfiles install what they need.
DEBIAN_SUITE=bookworm
debian_sources() {
  printf '%s\n' "deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE} main" \
    "deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE}-updates main" \
    "deb ${DEBIAN_SECURITY_MIRROR} ${DEBIAN_SUITE}-security main"
}

# Prints the local reference of the bookworm base image, building tarball and image as needed.
ensure_debian_base() {
  local key tarball sum ref
  key=$(
    {
      echo "minbase ${DEBIAN_SUITE} recipe=${RECIPE_VERSION}"
      debian_sources
    } | sha256sum | cut -c1-12
  )
  # In base/, so that ${IMAGES_DIR}/*.tar are image archives only (ready for `ctr import`).
  mkdir -p "${IMAGES_DIR}/base"
  tarball="${IMAGES_DIR}/base/debian-bookworm-minbase-${key}.tar"
  if [[ "${REFRESH_BASE}" == 1 ]]; then rm -f "${tarball}" "${tarball}.sha256"; fi
  if [[ ! -s "${tarball}" ]]; then
    log "mmdebstrap: Debian bookworm minbase -> ${tarball}"
    local t0=$SECONDS
    local sources=()
    mapfile -t sources < <(debian_sources)
    # Docs, man pages and translations are of no use in an image.
    mmdebstrap --variant=minbase --format=tar \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      "${DEBIAN_SUITE}" "${tarball}.tmp" "${sources[@]}" >"${IMAGES_DIR}/base/mmdebstrap.log" 2>&1 ||
      die "mmdebstrap failed, see ${IMAGES_DIR}/base/mmdebstrap.log"
    mv "${tarball}.tmp" "${tarball}"
    rm -f "${tarball}.sha256"
    log "mmdebstrap done in $((SECONDS - t0))s"
  fi
  [[ -s "${tarball}.sha256" ]] || sha256sum "${tarball}" | cut -c1-64 >"${tarball}.sha256"
  sum=$(cut -c1-12 "${tarball}.sha256")
  [[ -n "${sum}" ]] || die "no checksum of ${tarball}"
  ref="localhost/zthumb/debian-bookworm:${sum}"
  if [[ -z "$(image_id "${ref}")" ]]; then
    log "importing the base tarball as ${ref}"
    local ctr
    ctr=$(bh from --pull=never scratch)
    bh add --quiet "${ctr}" "${tarball}" / >/dev/null
    bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd /bin/bash \
      --label "org.opencontainers.image.description=Debian bookworm minbase" \
      "${ctr}"
    bh commit --quiet --rm "${ctr}" "${ref}" >/dev/null
  fi
  echo "${ref}"
}

# --- inputs hash ------------------------------------------------------------------------------

# The build context files a Dockerfile reads: sources of COPY/ADD (not --from) and of
# RUN --mount=type=bind (not from=), minus what .dockerignore drops. Prints "sha256  path".
context_inputs() {
  python3 "${ROOT}/hack/images/image_inputs.py" "${ROOT}" "$1"
}

# inputs_hash NAME BASE_ID BUILD_ARG... : prints the hash; the listing it hashes is left in
# ${IMAGES_DIR}/NAME.inputs.new (kept as NAME.inputs after a build, to show why a build ran).
inputs_hash() {
  local name=$1 base_id=$2
  shift 2
  {
    echo "recipe ${RECIPE_VERSION} ${name} ${REF[${name}]}"
    echo "base ${base_id}"
    printf 'arg %s\n' "$@" | sort
    sha256sum "${ROOT}/${DOCKERFILE[${name}]}" | cut -c1-64
    if [[ "${name}" == torch-base ]]; then
      # The torch layer depends on the `ml` extra only, not on the rest of pyproject.toml.
      context_inputs "${DOCKERFILE[${name}]}" | grep -v ' pyproject.toml$'
      python3 "${ROOT}/hack/images/extra_requirements.py" "${ROOT}/pyproject.toml" ml
    else
      context_inputs "${DOCKERFILE[${name}]}"
    fi
  } >"${IMAGES_DIR}/${name}.inputs.new"
  sha256sum <"${IMAGES_DIR}/${name}.inputs.new" | cut -c1-64
}

# --- wheelhouse ------------------------------------------------------------------------------

# Every pinned requirement of every image (and the build backend), downloaded once on the host
# with `pip download`: the builds install from it without the network. pip's own HTTP cache is
# no help here (the proxy's responses are not cacheable), so the wheelhouse is the cache.
# Needs a host Python of the images' minor version (3.11, Debian bookworm's), else the builds
# fall back to the index.
ensure_wheelhouse() {
  WHEELHOUSE_READY=""
  local reqs key
  if [[ "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]]; then
    log "wheelhouse: host python3 is not 3.11; the builds download from the index"
    return 0
  fi
  reqs="${WHEELHOUSE}/requirements.txt"
  mkdir -p "${WHEELHOUSE}"
  {
    python3 "${ROOT}/hack/images/extra_requirements.py" "${ROOT}/pyproject.toml" --core \
      ml server trainer operator
    python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' \
      "${ROOT}/pyproject.toml"
    if [[ -n "${TRAINER_EXTRA_PIP}" ]]; then
      # Space-separated requirements, one per line; no globbing ("pkg[extra]" is not a pattern).
      local extra_pip
      read -ra extra_pip <<<"${TRAINER_EXTRA_PIP}"
      printf '%s\n' "${extra_pip[@]}"
    fi
  } >"${reqs}.new"
  key=$(sha256sum <"${reqs}.new" | cut -c1-64)
  if [[ "$(cat "${WHEELHOUSE}/.complete" 2>/dev/null)" != "${key}" ]]; then
    local t0=$SECONDS
    log "wheelhouse: pip download -> ${WHEELHOUSE}"
    mv "${reqs}.new" "${reqs}"
    python3 -m pip download --quiet --disable-pip-version-check --dest "${WHEELHOUSE}" \
      -r "${reqs}" >"${IMAGES_DIR}/wheelhouse.log" 2>&1 || {
      tail -n 20 "${IMAGES_DIR}/wheelhouse.log" >&2
      die "pip download failed, see ${IMAGES_DIR}/wheelhouse.log"
    }
    echo "${key}" >"${WHEELHOUSE}/.complete"
    log "wheelhouse: $(du -sh "${WHEELHOUSE}" | cut -f1) in $((SECONDS - t0))s"
    echo "wheelhouse $((SECONDS - t0))s" >>"${TIMES}"
  else
    rm -f "${reqs}.new"
  fi
  WHEELHOUSE_READY=1
}

# --- build, verify, export --------------------------------------------------------------------

# build NAME BASE_REF BUILD_ARG... : builds unless the image with these inputs exists.
build() {
  local name=$1 base_ref=$2
  shift 2
  local ref=${REF[${name}]} base_id hash args=()
  base_id=$(image_id "${base_ref}")
  [[ -n "${base_id}" ]] || die "${name}: base image ${base_ref} is not in the local storage"
  hash=$(inputs_hash "${name}" "${base_id}" "$@")
  if [[ "${FORCE}" != 1 && "$(image_label "${ref}" "${INPUTS_LABEL}")" == "${hash}" ]]; then
    log "${name}: up to date (${ref}, inputs ${hash:0:12})"
    return 0
  fi
  if [[ -f "${IMAGES_DIR}/${name}.inputs" ]]; then
    log "${name}: inputs changed:"
    diff "${IMAGES_DIR}/${name}.inputs" "${IMAGES_DIR}/${name}.inputs.new" | grep '^[<>]' | head -n 10 >&2 || true
  fi
  for a in "$@"; do args+=(--build-arg "$a"); done
  # pip in the build installs from the wheelhouse only (--no-index --find-links: a read-only
  # volume), or from the index when there is none. Behind a TLS-intercepting proxy it also
  # needs the host's CA bundle. These are build-time mounts, never committed (under /root,
  # which the images' user cannot read anyway); the Dockerfiles' own
  # `--mount=type=cache,target=/root/.cache/pip` stays unused here.
  local pipconf="${IMAGES_DIR}/build-pip.conf"
  local volumes=(--volume "${pipconf}:/root/.config/pip/pip.conf:ro")
  printf '[global]\n' >"${pipconf}"
  if [[ -n "${WHEELHOUSE_READY}" ]]; then
    printf 'no-index = true\nfind-links = /root/.cache/zthumb-wheels\n' >>"${pipconf}"
    volumes+=(--volume "${WHEELHOUSE}:/root/.cache/zthumb-wheels:ro")
  fi
  # The bundle goes beside pip's config, not over /etc/ssl/certs/ca-certificates.crt: the
  # Dockerfiles install Debian's ca-certificates, whose post-install script rewrites that file
  # (a read-only mount there fails the install).
  if [[ -s "${BUILD_CA_BUNDLE}" ]]; then
    printf 'cert = /root/.config/pip/build-ca.crt\n' >>"${pipconf}"
    volumes+=(--volume "${BUILD_CA_BUNDLE}:/root/.config/pip/build-ca.crt:ro")
  fi
  log "${name}: building ${ref} from ${DOCKERFILE[${name}]} on ${base_ref}"
  local t0=$SECONDS
  # --layers=false: one new layer per image on top of its base (the shared torch layer stays
  # the base's own).
  (cd "${ROOT}" && bh bud --pull=never --isolation=chroot --layers=false \
    --file "${DOCKERFILE[${name}]}" --tag "${ref}" \
    --label "${INPUTS_LABEL}=${hash}" \
    "${volumes[@]}" \
    "${args[@]}" .) >"${IMAGES_DIR}/build-${name}.log" 2>&1 || {
    tail -n 40 "${IMAGES_DIR}/build-${name}.log" >&2
    die "${name}: build failed, full log: ${IMAGES_DIR}/build-${name}.log"
  }
  mv "${IMAGES_DIR}/${name}.inputs.new" "${IMAGES_DIR}/${name}.inputs"
  log "${name}: built in $((SECONDS - t0))s"
  echo "${name} build $((SECONDS - t0))s" >>"${TIMES}"
  BUILT+=("${name}")
}

# in_image REF USER CMD... : run a command in a throwaway container of the image.
in_image() {
  local ref=$1 user=$2 ctr rc=0
  shift 2
  ctr=$(bh from --pull=never "${ref}")
  bh run --isolation=chroot --user "${user}" "${ctr}" -- "$@" || rc=$?
  bh rm "${ctr}" >/dev/null
  return "${rc}"
}

verify() {
  local name=$1 ref=${REF[$1]} t0=$SECONDS
  log "${name}: smoke tests"
  # As the image's own user (10001), which cannot write to the image's files (Pod Security
  # restricted, readOnlyRootFilesystem: only /tmp and volumes are written at run time).
  local u=10001:10001 py_ro='import os,sys; sys.exit(os.access("/opt/venv", os.W_OK))'
  case "${name}" in
    torch-base)
      in_image "${ref}" "${u}" python -c 'import torch, diffusers, transformers, peft; print("torch", torch.__version__)'
      ;;
    zthumb)
      in_image "${ref}" "${u}" zthumb --help >/dev/null
      in_image "${ref}" "${u}" zthumb serve --help >/dev/null
      in_image "${ref}" "${u}" python -c 'import torch, diffusers, fastapi, zthumb.app; print("torch", torch.__version__)'
      in_image "${ref}" "${u}" python -c "${py_ro}"
      ;;
    trainer)
      in_image "${ref}" "${u}" zthumb-train --help >/dev/null
      in_image "${ref}" "${u}" python -c 'import torch, diffusers, peft, zthumb_trainer.train.loop; print("torch", torch.__version__)'
      in_image "${ref}" "${u}" python -c "${py_ro}"
      ;;
    operator)
      in_image "${ref}" "${u}" zthumb-operator --help >/dev/null
      in_image "${ref}" "${u}" python -c 'import kopf, zthumb_operator.handlers'
      if in_image "${ref}" "${u}" python -c 'import torch' 2>/dev/null; then
        die "operator: torch is importable in ${ref}; the operator image must not carry it"
      fi
      in_image "${ref}" "${u}" python -c "${py_ro}"
      ;;
    helm-test)
      in_image "${ref}" "${u}" /bin/sh -ec 'curl --version | head -n 1'
      ;;
  esac
  # No pip cache (nor anything else written at build time under a HOME) in the image.
  # (Mount points of the build's volumes may remain as empty files and directories.)
  # shellcheck disable=SC2016 # the image's sh expands ${left}, not this script
  in_image "${ref}" 0:0 /bin/sh -ec \
    'left=$(find /root/.cache /root/.config /tmp -type f -size +0c 2>/dev/null | head -n 5)
     [ -z "${left}" ] || { echo "${left}"; exit 1; }' ||
    die "${name}: build-time files left in the image (above)"
  log "${name}: smoke tests passed ($((SECONDS - t0))s)"
}

archive_of() { echo "${IMAGES_DIR}/${1}.tar"; }

# The manifest digest inside an oci-archive (what containerd reports after importing it).
archive_digest() {
  tar -xOf "$1" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])'
}

export_image() {
  local name=$1 ref=${REF[$1]} file id stamp
  file=$(archive_of "${name}")
  id=$(image_id "${ref}")
  stamp="${id} $(image_label "${ref}" "${INPUTS_LABEL}") ${COMPRESSION}"
  if [[ -s "${file}" && "$(cat "${file}.id" 2>/dev/null)" == "${stamp}" ]]; then
    log "${name}: archive up to date (${file})"
    return 0
  fi
  local flags=()
  case "${COMPRESSION}" in
    gzip | zstd) flags=(--compression-format "${COMPRESSION}") ;;
    *) die "ZTHUMB_IMAGE_COMPRESSION must be gzip or zstd, not ${COMPRESSION}" ;;
  esac
  local t0=$SECONDS
  # The old archive is stale (its stamp differs): drop it first, so the export needs room for
  # one copy of the image, not two.
  rm -f "${file}.tmp" "${file}.id" "${file}"
  ensure_free_space "${name}" "$(($(image_size_bytes "${ref}") * 3 / 2))"
  bh push --quiet "${flags[@]}" "${ref}" "oci-archive:${file}.tmp:${ref}"
  mv "${file}.tmp" "${file}"
  echo "${stamp}" >"${file}.id"
  log "${name}: exported ${file} ($(du -h "${file}" | cut -f1), $((SECONDS - t0))s)"
  echo "${name} export $((SECONDS - t0))s" >>"${TIMES}"
}

# --- containerd import ------------------------------------------------------------------------

find_ctr() {
  if [[ -n "${ZTHUMB_CTR:-}" ]]; then
    echo "${ZTHUMB_CTR}"
    return
  fi
  if command -v ctr >/dev/null; then
    command -v ctr
    return
  fi
  local c
  for c in "${CACHE_ROOT}"/*/bin/ctr "${CLUSTER_DIR}"/node/bin/ctr; do
    if [[ -x "${c}" ]]; then
      echo "${c}"
      return
    fi
  done
}

containerd_up() { [[ -S "${CONTAINERD_SOCK}" ]]; }

# import_image FILE REF: `ctr images import` into the node's containerd (namespace k8s.io, the
# CRI's), skipped when containerd already has REF with the archive's manifest digest.
import_image() {
  local file=$1 ref=$2 ctr want have
  ctr=$(find_ctr)
  [[ -n "${ctr}" ]] || die "no ctr binary (set ZTHUMB_CTR)"
  want=$(archive_digest "${file}")
  have=$("${ctr}" -a "${CONTAINERD_SOCK}" -n "${CTR_NAMESPACE}" images ls "name==${ref}" 2>/dev/null |
    awk -v r="${ref}" '$1 == r {print $3}')
  if [[ "${have}" == "${want}" ]]; then
    log "import: ${ref} already in containerd (${want:0:19})"
    return 0
  fi
  local t0=$SECONDS
  if [[ -n "${have}" ]]; then
    # Replace, not pile up: removing the old image first (--sync waits for containerd's garbage
    # collection) frees its unshared layers and snapshots, which a re-import alone leaves behind
    # (22 GB of stale images were seen in a node store after a few rebuilds).
    log "import: removing the previous ${ref} (${have:0:19})"
    "${ctr}" -a "${CONTAINERD_SOCK}" -n "${CTR_NAMESPACE}" images rm --sync "${ref}" >&2
  fi
  log "import: ${file} -> containerd ${CONTAINERD_SOCK} (${CTR_NAMESPACE})"
  "${ctr}" -a "${CONTAINERD_SOCK}" -n "${CTR_NAMESPACE}" images import "${file}" >&2
  have=$("${ctr}" -a "${CONTAINERD_SOCK}" -n "${CTR_NAMESPACE}" images ls "name==${ref}" |
    awk -v r="${ref}" '$1 == r {print $3}')
  [[ "${have}" == "${want}" ]] || die "import: containerd has ${ref} as '${have}', expected ${want}"
  log "import: ${ref} imported ($((SECONDS - t0))s)"
}

import_all() {
  if ! containerd_up; then
    log "import: skipped, containerd is not up (no socket ${CONTAINERD_SOCK};" \
      "set ZTHUMB_CONTAINERD_SOCK, or import later with: hack/images/build-images.sh import)"
    return 0
  fi
  local name file
  for name in "$@"; do
    file=$(archive_of "${name}")
    [[ -s "${file}" ]] || die "import: no archive ${file}; build it first"
    import_image "${file}" "${REF[${name}]}"
  done
}

# --- layer sharing ----------------------------------------------------------------------------

# Lists each archive's layers (from its OCI manifest) and checks that zthumb and trainer share
# every layer of torch-base, and that the operator has none of them.
layers_report() {
  local files=() name
  for name in "${EXPORTED[@]}"; do
    [[ -s "$(archive_of "${name}")" ]] && files+=("${name}=$(archive_of "${name}")")
  done
  local base_layers=""
  if [[ -n "$(image_id "${REF[torch-base]}")" ]]; then
    base_layers=$(bh inspect --type image --format '{{range .OCIv1.RootFS.DiffIDs}}{{.}} {{end}}' "${REF[torch-base]}")
  fi
  python3 "${ROOT}/hack/images/oci_layers.py" "${base_layers}" "${files[@]}"
}

# --- main -------------------------------------------------------------------------------------

IMPORT=1 FORCE=0 VERIFY=1 REFRESH_BASE=0 CMD=build
WANT=()
while (($#)); do
  case "$1" in
    --no-import) IMPORT=0 ;;
    --force) FORCE=1 ;;
    --no-verify) VERIFY=0 ;;
    --refresh-base) REFRESH_BASE=1 ;;
    import | layers | list | storage) CMD=$1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*) die "unknown option $1" ;;
    *)
      [[ -n "${DOCKERFILE[$1]:-}" && "$1" != torch-base ]] ||
        die "unknown image $1 (one of: ${EXPORTED[*]})"
      WANT+=("$1")
      ;;
  esac
  shift
done
((${#WANT[@]})) || WANT=("${EXPORTED[@]}")

if [[ "${CMD}" == list ]]; then
  for name in "${WANT[@]}"; do echo "${name} ${REF[${name}]} $(archive_of "${name}")"; done
  exit 0
fi
if [[ "${CMD}" == storage ]]; then
  printf '%s\n' --root "${STORAGE_DIR}" --runroot "${RUN_DIR}" --storage-driver "$(storage_driver)"
  exit 0
fi

mkdir -p "${IMAGES_DIR}" "${RUN_DIR}"
# One build at a time on this storage.
exec 9>"${IMAGES_DIR}/.lock"
flock 9
# buildah stages every blob of a push in $TMPDIR (/var/tmp by default) and leaves it there when
# it is killed: a few killed exports filled the disk. Our own scratch folder, under the lock, is
# emptied at every start, so nothing a previous run left behind outlives it.
export TMPDIR="${IMAGES_DIR}/tmp"
rm -rf "${TMPDIR}"
mkdir -p "${TMPDIR}"
ensure_tools
DRIVER=$(storage_driver)

case "${CMD}" in
  import)
    import_all "${WANT[@]}"
    exit 0
    ;;
  layers)
    layers_report
    exit
    ;;
esac

TIMES="${IMAGES_DIR}/times.txt"
: >"${TIMES}"
BUILT=()
T0=$SECONDS
log "storage ${STORAGE_DIR} (${DRIVER}), archives in ${IMAGES_DIR}, tag ${TAG}"
DEBIAN_BASE=$(ensure_debian_base)
ensure_wheelhouse

want() { [[ " ${WANT[*]} " == *" $1 "* ]]; }
# Only the base differs from `docker build` (a registry image there, this local rootfs here); the
# other build arguments keep their defaults (EXTRA_PIP: ZTHUMB_TRAINER_EXTRA_PIP, empty unless set).
if want zthumb || want trainer; then build torch-base "${DEBIAN_BASE}" "BASE_IMAGE=${DEBIAN_BASE}"; fi
if want zthumb; then build zthumb "${REF[torch-base]}" "TORCH_BASE=${REF[torch-base]}"; fi
if want trainer; then
  build trainer "${REF[torch-base]}" "TORCH_BASE=${REF[torch-base]}" "EXTRA_PIP=${TRAINER_EXTRA_PIP}"
fi
if want operator; then build operator "${DEBIAN_BASE}" "BASE_IMAGE=${DEBIAN_BASE}"; fi
if want helm-test; then build helm-test "${DEBIAN_BASE}" "BASE_IMAGE=${DEBIAN_BASE}"; fi

if ((${#BUILT[@]})); then
  # Old images whose tag moved to a rebuild: drop them (and layers nothing else uses).
  bh rmi --prune >/dev/null 2>&1 || true
fi
if [[ "${VERIFY}" == 1 ]]; then
  for name in "${WANT[@]}"; do
    # Once per image id: a stamp records the id that passed.
    id=$(image_id "${REF[${name}]}")
    if [[ "$(cat "${IMAGES_DIR}/${name}.verified" 2>/dev/null)" != "${id}" ]]; then
      verify "${name}"
      echo "${id}" >"${IMAGES_DIR}/${name}.verified"
    fi
  done
fi
for name in "${WANT[@]}"; do export_image "${name}"; done
if want zthumb && want trainer; then layers_report >"${IMAGES_DIR}/layers.txt" || {
  cat "${IMAGES_DIR}/layers.txt" >&2
  die "layer sharing check failed"
}; fi

for name in "${WANT[@]}"; do
  log "$(printf '%-9s %-34s %8s  %s' "${name}" "${REF[${name}]}" \
    "$(du -h "$(archive_of "${name}")" | cut -f1)" "$(archive_of "${name}")")"
done
if [[ "${IMPORT}" == 1 ]]; then import_all "${WANT[@]}"; fi
log "done in $((SECONDS - T0))s"
