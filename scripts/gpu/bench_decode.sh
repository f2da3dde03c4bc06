#!/usr/bin/env bash
# bash scripts/gpu/bench_decode.sh   (on the GPU machine, from the repo root; issue19.sh runs it when time is left)
#
# The bf16 decoding figure: joins the embedded SmolLM2 GGUF from the parts under .gguf/ (they travel one per
# call: scripts/gpu/gguf_parts.py split, here, prints the calls), then benchmarks/bench_generate.py on CUDA on
# the first 32 records of .gguf/prompts.json (written by split), Alpaca template:
#  1. ours vs model.generate at batch 16, one prompt at a time, sampled batch 1 = batch 16, --profile 15;
#  2. the ratio alone again with cuDNN attention off (--no-cudnn-sdpa), the A/B of the earlier bf16 gap.
# Expected (not yet measured): about 100 s on an H200, most of it the GGUF's conversion and the batch-1 runs;
# DECODE_LIMIT (seconds, default 150) caps both runs together. One file back: $OUT/decode.json (JSON lines).
# DECODE_DEVICE=cpu DECODE_EXTRA="--n 4 --max-new-tokens 4 --repeats 1" checks the script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT:-bench-arch-out}
mkdir -p "$OUT_DIR"
if [[ -z ${SFT_GPU_WHEELS_READY:-} && ${DECODE_DEVICE:-cuda} == cuda ]]; then source scripts/gpu/setup_wheels.sh || exit 1; fi
LIMIT=${DECODE_LIMIT:-150}
PY=${PY:-python3}
DATA=${DECODE_DATA:-.gguf/prompts.json}
GGUF=${DECODE_GGUF_DIR:-/tmp/sft-gguf}/SmolLM2-135M-Instruct.Q4_1.gguf
"$PY" scripts/gpu/gguf_parts.py join "$GGUF" || exit 3
LOG=$(mktemp /tmp/decode.XXXXXX.log)
started=$SECONDS
common=(--device "${DECODE_DEVICE:-cuda}" --model "$GGUF" --n 32 --max-new-tokens 32 --batch-size 16 --repeats 4)
# shellcheck disable=SC2086 -- DECODE_EXTRA holds several arguments
timeout $((LIMIT * 2 / 3)) "$PY" benchmarks/bench_generate.py "$DATA" "${common[@]}" --profile 15 ${DECODE_EXTRA:-} \
  >"$OUT_DIR/decode.json" 2>>"$LOG"
rc=$?
echo "decode (cuDNN attention on): exit $rc after $((SECONDS - started)) s"
left=$((LIMIT - (SECONDS - started)))
if (( left > 20 )); then
  # shellcheck disable=SC2086
  timeout "$left" "$PY" benchmarks/bench_generate.py "$DATA" "${common[@]}" --ratio-only --no-cudnn-sdpa ${DECODE_EXTRA:-} \
    >>"$OUT_DIR/decode.json" 2>>"$LOG"
  rc2=$?
  echo "decode (--no-cudnn-sdpa): exit $rc2 after $((SECONDS - started)) s"
  (( rc2 == 0 )) || rc=1
else
  echo "decode (--no-cudnn-sdpa): skipped, $left s left"
fi
cat "$OUT_DIR/decode.json"; tail -5 "$LOG"
exit $rc
