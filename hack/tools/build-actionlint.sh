#!/usr/bin/env bash
# Build actionlint (MIT), the checker of the GitHub Actions workflows in .github/workflows that
# `make lint` runs, from its Go module: the workflows cannot run here, so their syntax,
# expressions and action inputs are checked instead.
# Output and caching: hack/lib/build-go-tool.sh. Env override: ACTIONLINT_VERSION.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../lib/build-go-tool.sh" actionlint \
  github.com/rhysd/actionlint/cmd/actionlint "${ACTIONLINT_VERSION:-v1.7.12}"
