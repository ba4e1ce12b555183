#!/usr/bin/env bash
# Build versitygw (Versity S3 Gateway, Apache-2.0) from its Go module: a real S3-compatible server
# (SigV4-authenticated, POSIX backend) that tests/unit/trainer/dataset/test_dataset_sources.py starts on
# loopback to fetch spec.dataset.source.s3 datasets from. MinIO's server is AGPL, so not it.
# Output and caching: hack/lib/build-go-tool.sh. Env override: VERSITYGW_VERSION.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../lib/build-go-tool.sh" versitygw \
  github.com/versity/versitygw/cmd/versitygw "${VERSITYGW_VERSION:-v1.8.0}"
