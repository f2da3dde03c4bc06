#!/usr/bin/env bash
# bash scripts/quickstart.sh  -- set up .venv and run the main job on the embedded default model, on CPU.
# Until training lands this prepares the bundled demo data and shows what would be trained.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/sft-prepare out_dir=outputs/quickstart/prepare inspect=1 "$@"
