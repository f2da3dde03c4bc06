#!/usr/bin/env bash
# bash scripts/gpu/bench_arch.sh   (on the GPU machine, from the repo root, with .whl/ carried; see README "Benchmarks")
#
# The realistic QLoRA benchmark (benchmarks/bench_train_arch.py) on one GPU with no network: installs the
# carried wheels (scripts/gpu/fetch_wheels.sh fills .whl/ beforehand, where pip reaches an index) into
# /tmp/site, then times Llama-3.2-1B with ours, TRL and plain HF + PEFT, and Llama-3.1-8B with ours and TRL,
# 4,096-token rows, one row per micro-batch, 4 micro-batches per step. Sized for about 8 minutes on an H200:
# every stack's process has a timeout, so one that hangs costs its own share and the rest still run.
# Writes each JSON object to $OUT (the device tool's folder) or ./bench-arch-out, and prints it.
# BENCH_EXTRA="--smoke" runs the same on the scaled-down architectures (a check of the script, in a minute or two).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT:-bench-arch-out}
if [[ -z ${SFT_GPU_WHEELS_READY:-} ]]; then source scripts/gpu/setup_wheels.sh || exit 1; fi  # issue19.sh did it
# the random model directories (16 GB for 8B) go to memory when /dev/shm has room, else to /tmp
WORK=/tmp
if [[ -d /dev/shm ]] && (( $(df -k --output=avail /dev/shm | tail -1) > 40 * 1024 * 1024 )); then WORK=/dev/shm; fi
status=0
bench() {  # name, then bench_train_arch.py arguments
  local name=$1; shift
  local started=$SECONDS
  # shellcheck disable=SC2086 -- BENCH_EXTRA holds several arguments
  timeout "$TOTAL" python3 benchmarks/bench_train_arch.py "$@" ${BENCH_EXTRA:-} --workdir "$WORK" >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.log"
  local rc=$?
  cat "$OUT_DIR/$name.json"; tail -5 "$OUT_DIR/$name.log"
  echo "$name: exit $rc after $((SECONDS - started)) s"
  [[ $rc -eq 0 ]] || status=1
}
# expected (not yet measured): 1B about 2 minutes, 8B about 3.5 (writing 16 GB, two loads of 8B into nf4)
TOTAL=220 bench llama-3.2-1b --arch llama-3.2-1b --stacks ours,trl,hf --steps 6 --stack-timeout 75
TOTAL=280 bench llama-3.1-8b --arch llama-3.1-8b --stacks ours,trl --steps 4 --stack-timeout 140
exit $status
