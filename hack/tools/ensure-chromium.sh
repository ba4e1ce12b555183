#!/usr/bin/env bash
# Chromium from Debian for the report page's browser test (tests/unit/server/test_reports_browser.py,
# driven over the DevTools protocol: no browser download at test time). Installs it with apt-get
# when it is missing and this runs as root; otherwise says how, and the test fails saying the same
# (ZTHUMB_ALLOW_NO_BROWSER=1 lets it skip instead).
set -euo pipefail

# shellcheck source=hack/lib/log.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/log.sh"
LOG_TAG=ensure-chromium

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [[ "${EUID}" -eq 0 ]] && command -v apt-get >/dev/null 2>&1 && [[ "${ZTHUMB_SKIP_APT:-0}" != 1 ]]; then
  log "installing chromium (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  exit 0
fi
log "chromium is missing: install it (apt-get install chromium) for the report page test"
