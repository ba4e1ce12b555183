#!/usr/bin/env bash
# Import container image archives (OCI archive, e.g. from
# `buildah push IMAGE oci-archive:FILE:IMAGE`, or docker-archive) into the
# local cluster's real node (containerd, namespace k8s.io), so pods on
# zthumb-real-0 can run them with imagePullPolicy: Never (or IfNotPresent and
# a tag other than latest).
#
#   hack/cluster/node-import.sh ARCHIVE...
#
# Same as `hack/cluster/cluster.sh import ARCHIVE...`; honours ZTHUMB_CLUSTER_DIR and
# ZTHUMB_CACHE like cluster.sh. Archives dropped into
# ${ZTHUMB_NODE_IMAGES:-$ZTHUMB_CACHE/node-images}/*.tar are imported at every
# `hack/cluster/cluster.sh up` as well.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/cluster.sh" import "$@"
