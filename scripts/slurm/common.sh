# Sourced by the sbatch scripts in this folder: where the repo and its Python are, where the run lives, and
# the job-side handler that turns a checkpoint-on-signal into a requeue. Not meant to be run by itself.
#
# Environment (all optional):
#   SFT_REPO          the checkout (default: the directory sbatch was called from, $SLURM_SUBMIT_DIR)
#   SFT_PYTHON        interpreter with sft installed (default: $SFT_REPO/.venv/bin/python)
#   SFT_RUN_DIR       Hydra's run directory when no hydra.run.dir= override is given
#                     (default: outputs/slurm/<job id>, stable across requeues so the rerun resumes it)
#   SFT_MAX_REQUEUES  stop requeueing after this many restarts (default 20)

SFT_EXIT_PREEMPTED=75  # sft-train: "checkpoint saved on SIGTERM/SIGUSR1, rerun the same command to resume"

SFT_REPO="${SFT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
SFT_PYTHON="${SFT_PYTHON:-$SFT_REPO/.venv/bin/python}"
export PYTHONUNBUFFERED=1
cd "$SFT_REPO" || { echo "sft: cannot cd to SFT_REPO=$SFT_REPO" >&2; exit 1; }

# sft_overrides ARGS...: prints ARGS one per line, plus hydra.run.dir=... unless one is given. A requeued job
# keeps its job id, so the default run directory (and out_dir, which defaults to it) is the same on rerun.
sft_overrides() {
  local arg has_run_dir=0
  for arg in "$@"; do
    case "$arg" in hydra.run.dir=*) has_run_dir=1 ;; esac
    printf '%s\n' "$arg"
  done
  [ "$has_run_dir" = 1 ] || printf '%s\n' "hydra.run.dir=${SFT_RUN_DIR:-outputs/slurm/${SLURM_JOB_ID:-local}}"
}

# sft_run_step COMMAND...: run the job step in the background and wait for it.
#   SIGUSR1 to this batch shell (#SBATCH --signal=B:USR1@N, the time-limit warning; or by hand:
#   scancel --batch --signal=USR1 JOBID) is passed on as SIGUSR1 to every process of the job's steps; the
#   trainer saves a checkpoint at the next step boundary and exits 75 (torchrun reports it as 1).
#   Afterwards the job is requeued when the step exited 75, or failed after a warning; it reruns the same
#   command, which resumes from the newest checkpoint. SIGTERM (scancel, preemption, the time limit itself)
#   never requeues from here: Slurm requeues preempted --requeue jobs itself, and a cancel stays a cancel.
sft_run_step() {
  local warned=0 terminated=0 rc pid
  trap 'warned=1; echo "sft: SIGUSR1 (time-limit warning): asking the job step to checkpoint" >&2;
        scancel --signal=USR1 "$SLURM_JOB_ID" || true' USR1
  trap 'terminated=1; echo "sft: SIGTERM: the step checkpoints; no requeue from the job script" >&2' TERM
  "$@" &
  pid=$!
  while true; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break  # wait was only interrupted by a trapped signal
  done
  trap - USR1 TERM
  if [ "$terminated" = 0 ] && { [ "$rc" = "$SFT_EXIT_PREEMPTED" ] || { [ "$warned" = 1 ] && [ "$rc" != 0 ]; }; }; then
    if [ "${SLURM_RESTART_COUNT:-0}" -lt "${SFT_MAX_REQUEUES:-20}" ]; then
      echo "sft: step exited $rc after a checkpoint request; requeueing job $SLURM_JOB_ID" \
           "(restart $(( ${SLURM_RESTART_COUNT:-0} + 1 )))" >&2
      scontrol requeue "$SLURM_JOB_ID" && return 0
      echo "sft: scontrol requeue failed; resubmit the same command to resume" >&2
    else
      echo "sft: not requeueing: already restarted ${SLURM_RESTART_COUNT} times (SFT_MAX_REQUEUES)" >&2
    fi
  fi
  return "$rc"
}

# "${SFT_IGNORE_USR1[@]}" COMMAND...: run COMMAND with SIGUSR1 ignored. For torchrun: the warning reaches
# every process of the step, and torchrun itself must survive it while its workers (which install their own
# handler) checkpoint. An ignored signal stays ignored across exec.
SFT_IGNORE_USR1=(bash -c 'trap "" USR1; exec "$@"' sft-ignore-usr1)
