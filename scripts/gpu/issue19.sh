#!/usr/bin/env bash
# bash scripts/gpu/issue19.sh   (on the GPU machine, from the repo root, with .whl/ carried; about 8 minutes on an H200)
#
# Issue 19's GPU checks in one run, each with its own time limit, results under $OUT:
#  1. tests/gpu/test_attention_gpu.py (one varlen kernel call per layer: outputs and gradients against each
#     example alone) and tests/gpu/test_kernels_gpu.py (train.kernels=liger keeps loss and gradients);
#  2. scripts/gpu/bench_arch.sh: Llama-3.2-1B with ours, TRL and HF + PEFT, Llama-3.1-8B with ours and TRL;
#  3. when more than 90 s are left of 560, 1B with ours_liger (train.kernels=liger) against ours.
# The decoding benchmark (bench_generate.py) needs the embedded SmolLM2 GGUF, which is larger than what the
# device tool carries; it is not part of this run.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT_DIR=${OUT:-bench-arch-out}
source scripts/gpu/setup_wheels.sh || exit 1
export SFT_GPU_WHEELS_READY=1
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_attention_gpu.py tests/gpu/test_kernels_gpu.py \
  >"$OUT_DIR/gpu_tests.log" 2>&1
echo "gpu tests: exit $?"; tail -15 "$OUT_DIR/gpu_tests.log"
bash scripts/gpu/bench_arch.sh
left=$((560 - SECONDS))  # the device tool stops a command at 600 s
if (( left > 90 )); then
  timeout "$left" python3 benchmarks/bench_train_arch.py --arch llama-3.2-1b --stacks ours,ours_liger --steps 4 \
    --stack-timeout $((left / 2 - 5)) --workdir /tmp >"$OUT_DIR/liger-1b.json" 2>"$OUT_DIR/liger-1b.log"
  echo "liger 1b: exit $?"; cat "$OUT_DIR/liger-1b.json"
else
  echo "liger 1b: skipped, $left s left"
fi
