#!/usr/bin/env bash
# Set up (if needed) and run the gold-world demo: `bash scripts/demo.sh [--quick] [--out DIR]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
marginkit demo "$@"
