#!/usr/bin/env bash
# bash scripts/test.sh [pytest args]  -- set up .venv (scripts/setup.sh) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SFT_CACHE_DIR="${SFT_CACHE_DIR:-$PWD/.cache/sft}"  # converted model + processed data, reused across runs
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${SFT_VENV:-.venv}/bin/python" -m pytest "$@"
