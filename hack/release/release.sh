#!/usr/bin/env bash
# Package a ZThumb release into dist/ (`make release`; README, "Install on your cluster"):
#
#   1. hack/release/check_versions.py: every place that spells the version agrees with pyproject.toml
#      (and, when ZTHUMB_RELEASE_TAG is set, e.g. by the release workflow, the tag is v<version>);
#   2. hack/images/build-images.sh --no-import: every image, reusing what is cached (an image whose
#      inputs did not change is neither rebuilt nor re-exported); its OCI archives go into dist/
#      as <image>-<version>.oci.tar (hard links where the cache is on the same disk: the
#      archives are GBs, and build-images.sh replaces an archive by renaming a new file over it,
#      so a link never sees a later build);
#   3. `helm package` of charts/zthumb (the server) and charts/zthumb-operator -> dist/zthumb-<version>.tgz
#      and dist/zthumb-operator-<version>.tgz (helm from hack/cluster/cluster.sh bindir);
#   4. a CycloneDX SBOM (JSON) per Python image, dist/<image>-<version>.cdx.json, made by
#      `cyclonedx-py requirements` from the pinned requirements that image's Dockerfile installs
#      (hack/images/extra_requirements.py with the same extras: zthumb = server, trainer = trainer +
#      ZTHUMB_TRAINER_EXTRA_PIP, operator = operator, each with the core dependencies). It lists
#      those pins, not the transitive dependencies pip resolved inside the image, nor the
#      Debian packages; helm-test (curl on Debian) has no Python environment and no SBOM;
#   5. dist/SHA256SUMS over every file in dist/ (`cd dist && sha256sum -c SHA256SUMS`);
#   6. prints the commands that push the archives and the chart to a registry.
#
#   hack/release/release.sh [--skip-images] [--dist DIR] [--registry REGISTRY]
#   hack/release/release.sh push-commands [--dist DIR] [--registry REGISTRY]   only step 6, for what
#                                                                       dist/ holds
#
# --skip-images leaves out step 2 (the chart, the SBOMs and SHA256SUMS only: no buildah, seconds).
# REGISTRY is where the images go, e.g. ghcr.io/my-org: images as REGISTRY/<image>:<version>, the
# charts as oci://REGISTRY/charts/zthumb and .../zthumb-operator. Without one the commands carry a <registry> placeholder.
#
# Env: ZTHUMB_RELEASE_REGISTRY (= --registry), ZTHUMB_RELEASE_TAG (a git tag that must be
# v<version>), ZTHUMB_CYCLONEDX [.venv/bin/cyclonedx-py, else on PATH],
# ZTHUMB_TRAINER_EXTRA_PIP (as for hack/images/build-images.sh), SOURCE_DATE_EPOCH [the commit's time]
# (the SBOMs' timestamp), and hack/images/build-images.sh's own.
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

# shellcheck source=hack/lib/log.sh
source "${ROOT}/hack/lib/log.sh"
LOG_TAG=release

# Python images -> the extras their Dockerfiles install (see step 4 above).
declare -A SBOM_EXTRA=([zthumb]=server [trainer]=trainer [operator]=operator)

CMD=release SKIP_IMAGES=0 DIST=dist REGISTRY="${ZTHUMB_RELEASE_REGISTRY:-}"
while (($#)); do
  case "$1" in
    push-commands) CMD=push-commands ;;
    --skip-images) SKIP_IMAGES=1 ;;
    --dist)
      (($# >= 2)) || die "--dist needs a directory"
      DIST=$2
      shift
      ;;
    --registry)
      (($# >= 2)) || die "--registry needs a value, e.g. ghcr.io/my-org"
      REGISTRY=$2
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${ROOT}/hack/release/release.sh" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument $1 (hack/release/release.sh --help)" ;;
  esac
  shift
done

# A registry is printed into shell commands: host[:port][/path], nothing a shell would expand.
if [[ -n "${REGISTRY}" && ! "${REGISTRY}" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*$ ]]; then
  die "--registry / ZTHUMB_RELEASE_REGISTRY '${REGISTRY}' is not a registry path like ghcr.io/my-org" \
    "(lower case, no scheme, no trailing /)"
fi

VERSION=$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' pyproject.toml)
# Our charts (directories under charts/), each packaged as <name>-<version>.tgz.
CHARTS=(zthumb zthumb-operator)

print_push_commands() {
  local reg=${REGISTRY:-<registry>} archive image chart n=0
  echo "# Push ZThumb ${VERSION} from ${DIST}/ (log in first: skopeo login / helm registry login)"
  for archive in "${DIST}"/*-"${VERSION}".oci.tar; do
    [[ -e "${archive}" ]] || continue
    image=$(basename "${archive}" "-${VERSION}.oci.tar")
    echo "skopeo copy oci-archive:${archive} docker://${reg}/${image}:${VERSION}"
    n=$((n + 1))
  done
  ((n)) || echo "# (no image archives in ${DIST}/: they were skipped)"
  for chart in "${CHARTS[@]}"; do
    [[ -s "${DIST}/${chart}-${VERSION}.tgz" ]] || die "no ${DIST}/${chart}-${VERSION}.tgz; run hack/release/release.sh first"
    echo "helm push ${DIST}/${chart}-${VERSION}.tgz oci://${reg}/charts"
  done
  [[ -n "${REGISTRY}" ]] ||
    echo "# <registry>: pass --registry REGISTRY (or ZTHUMB_RELEASE_REGISTRY) to print runnable commands"
}

if [[ "${CMD}" == push-commands ]]; then
  print_push_commands
  exit 0
fi

# --- 1. one version ---------------------------------------------------------------------------
python3 hack/release/check_versions.py >&2 || die "the version is spelled differently somewhere (above)"
if [[ -n "${ZTHUMB_RELEASE_TAG:-}" && "${ZTHUMB_RELEASE_TAG}" != "v${VERSION}" ]]; then
  die "the tag ${ZTHUMB_RELEASE_TAG} is not v${VERSION}, the version in pyproject.toml"
fi

# Tools first: fail before anything is built.
HELM="$(hack/cluster/cluster.sh bindir)/helm"
[[ -x "${HELM}" ]] || HELM=$(command -v helm) || die "no helm: run hack/cluster/build-k8s.sh (or make k8s-bin)"
CYCLONEDX=${ZTHUMB_CYCLONEDX:-}
if [[ -z "${CYCLONEDX}" ]]; then
  if [[ -x .venv/bin/cyclonedx-py ]]; then CYCLONEDX=.venv/bin/cyclonedx-py; else
    CYCLONEDX=$(command -v cyclonedx-py) || die "no cyclonedx-py: make install (the dev extra pins it)"
  fi
fi

mkdir -p "${DIST}"
# What an earlier release run put here (ours by name); anything else in dist/ is left alone
# and, being in dist/, summed like the rest.
rm -f "${DIST}"/*.oci.tar "${DIST}"/zthumb-*.tgz "${DIST}"/*.cdx.json "${DIST}/SHA256SUMS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zthumb-release.XXXXXX")
trap 'rm -rf "${WORK}"' EXIT

# --- 2. images --------------------------------------------------------------------------------
if [[ "${SKIP_IMAGES}" == 1 ]]; then
  log "images skipped (--skip-images)"
else
  log "images: hack/images/build-images.sh --no-import (cached images are reused)"
  hack/images/build-images.sh --no-import
  while read -r image ref archive; do
    [[ -s "${archive}" ]] || die "${image}: no archive ${archive} after the build"
    [[ "${ref##*:}" == "${VERSION}" ]] || die "${image}: built as ${ref}, not tagged ${VERSION}"
    ln -f "${archive}" "${DIST}/${image}-${VERSION}.oci.tar" 2>/dev/null ||
      cp "${archive}" "${DIST}/${image}-${VERSION}.oci.tar"
    log "${image}: ${ref} -> ${DIST}/${image}-${VERSION}.oci.tar"
  done < <(hack/images/build-images.sh list)
fi

# --- 3. charts --------------------------------------------------------------------------------
for chart in "${CHARTS[@]}"; do
  "${HELM}" package "charts/${chart}" --destination "${DIST}" >&2
  [[ -s "${DIST}/${chart}-${VERSION}.tgz" ]] || die "helm package did not write ${DIST}/${chart}-${VERSION}.tgz"
done

# --- 4. SBOMs ---------------------------------------------------------------------------------
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
for image in zthumb trainer operator; do
  reqs="${WORK}/${image}-requirements.txt"
  python3 hack/images/extra_requirements.py pyproject.toml "${SBOM_EXTRA[${image}]}" --core >"${reqs}"
  if [[ "${image}" == trainer && -n "${ZTHUMB_TRAINER_EXTRA_PIP:-}" ]]; then
    tr ' ' '\n' <<<"${ZTHUMB_TRAINER_EXTRA_PIP}" | sed '/^$/d' >>"${reqs}"
  fi
  # The root component's own "no dependency graph" warning is expected: a requirements list has none.
  PYTHONWARNINGS=ignore::UserWarning "${CYCLONEDX}" requirements --pyproject pyproject.toml \
    --output-reproducible --of JSON -o "${DIST}/${image}-${VERSION}.cdx.json" "${reqs}"
  log "${image}: SBOM of $(wc -l <"${reqs}") pinned requirements -> ${DIST}/${image}-${VERSION}.cdx.json"
done

# --- 5. checksums -----------------------------------------------------------------------------
(cd "${DIST}" && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort |
  xargs -r -d '\n' sha256sum -- >"${WORK}/SHA256SUMS")
mv "${WORK}/SHA256SUMS" "${DIST}/SHA256SUMS"
(cd "${DIST}" && sha256sum --quiet -c SHA256SUMS) || die "${DIST}/SHA256SUMS does not verify"

# --- 6. push ----------------------------------------------------------------------------------
log "ZThumb ${VERSION} in ${DIST}/:"
(cd "${DIST}" && ls -l) >&2
print_push_commands
