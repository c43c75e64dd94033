#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTML report's browser test needs headless Chromium. Install Debian's package when it is absent and
# we may (root, apt-get present); otherwise that one test skips and says so.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing chromium (Debian) for the report's browser test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >/tmp/marginkit-chromium.log 2>&1 || echo "test: chromium install failed (see /tmp/marginkit-chromium.log)"
fi
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests benchmarks
python -m pytest "$@"
