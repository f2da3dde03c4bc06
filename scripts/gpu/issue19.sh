#!/usr/bin/env bash
# bash scripts/gpu/issue19.sh   (on the GPU machine, from the repo root, with .whl/ carried; about 8 minutes on an H200)
#
# Issue 19's GPU checks in one run, each with its own time limit, results under $OUT:
#  1. tests/gpu/test_attention_gpu.py (one varlen kernel call per layer: outputs and gradients against each
#     example alone) and tests/gpu/test_kernels_gpu.py (train.kernels=liger keeps loss and gradients);
#  2. scripts/gpu/bench_arch.sh: Llama-3.2-1B with ours, TRL and HF + PEFT, Llama-3.1-8B with ours and TRL;
#  3. when more than 60 s are left of 560 and the GGUF's parts are under .gguf/, the bf16 decoding figure
#     (scripts/gpu/bench_decode.sh, at most 150 s): the embedded GGUF (94 MiB) travels in parts, one per call
#     (`python3 scripts/gpu/gguf_parts.py split` here prints the calls: a short one carrying part 1, then this
#     one with .whl and the rest, on the same warm machine);
#  4. when more than 90 s are left, 1B with ours_liger (train.kernels=liger) against ours.
# At most 8 files come back from $OUT: versions.txt, gpu_tests.log, 4 from bench_arch.sh, decode.json,
# liger-1b.json (the decode and liger logs stay in /tmp; their tails are printed).
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
if [[ ! -f .gguf/manifest.json ]]; then
  echo "decode: skipped, no .gguf/manifest.json (carry the parts: python3 scripts/gpu/gguf_parts.py split)"
elif (( left > 60 )); then
  DECODE_LIMIT=$(( left > 150 ? 150 : left - 5 )) bash scripts/gpu/bench_decode.sh
  echo "decode: exit $?"
else
  echo "decode: skipped, $left s left"
fi
left=$((560 - SECONDS))
if (( left > 90 )); then
  timeout "$left" python3 benchmarks/bench_train_arch.py --arch llama-3.2-1b --stacks ours,ours_liger --steps 4 \
    --stack-timeout $((left / 2 - 5)) --workdir /tmp >"$OUT_DIR/liger-1b.json" 2>/tmp/liger-1b.log
  echo "liger 1b: exit $?"; cat "$OUT_DIR/liger-1b.json"; tail -5 /tmp/liger-1b.log
else
  echo "liger 1b: skipped, $left s left"
fi
