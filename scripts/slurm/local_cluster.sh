#!/usr/bin/env bash
# sudo bash scripts/slurm/local_cluster.sh start|stop|status
#
# A real one-node Slurm cluster on this machine, for trying the sbatch scripts and the Hydra launcher and for
# the tests marked `slurm`. `start` installs the Debian packages slurmctld slurmd slurm-client munge when
# missing, writes /etc/slurm/slurm.conf for this host (its CPUs and memory as slurmd detects them), starts
# munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle. `stop` cancels every job and
# stops the daemons it started. Both are idempotent. Needs root (apt-get, daemons); Debian/Ubuntu only.
#
# It refuses to overwrite a slurm.conf it did not write (a real cluster's); SFT_SLURM_FORCE=1 overrides.
# Daemon logs: /var/log/slurm/{slurmctld,slurmd}.log. Job state is not kept across `start` (slurmctld -c).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARK="# written by sft scripts/slurm/local_cluster.sh"
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
WAIT_S="${SFT_SLURM_WAIT_S:-90}"  # how long `start` waits for the node to become idle

die() { echo "local_cluster: $*" >&2; exit 1; }
say() { echo "local_cluster: $*" >&2; }
running() {  # running PIDFILE: its process exists (checked through /proc, so it works without root too)
  local pid; pid="$(cat "$1" 2>/dev/null)"; [ -n "$pid" ] && [ -d "/proc/$pid" ]
}

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root (apt-get and the Slurm daemons); run it with sudo"
}

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd sinfo munged; do
    command -v "$cmd" >/dev/null 2>&1 || command -v "/usr/sbin/$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [ ${#missing[@]} = 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install slurmctld slurmd slurm-client munge"
  say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null || die "apt-get install failed"
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF" && [ "${SFT_SLURM_FORCE:-0}" != 1 ]; then
    die "$CONF exists and was not written by this script (a real cluster?); SFT_SLURM_FORCE=1 overwrites it"
  fi
  local host cpus mem
  host="$(hostname -s)"
  # slurmd -C prints what slurmd itself will detect; configuring more than that drains the node.
  read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {for (i = 1; i <= NF; i++) {split($i, kv, "=");
    if (kv[1] == "CPUs") c = kv[2]; if (kv[1] == "RealMemory") m = kv[2]}} END {print c, m}')
  [ -n "$cpus" ] && [ -n "$mem" ] || die "could not read CPUs/RealMemory from 'slurmd -C'"
  mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
  cat > "$CONF.tmp" <<CONF
$MARK for host $host ($cpus CPUs, $mem MB).
ClusterName=sft-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in containers: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
# Credential lifetime; also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=10
# CPUs are the consumable resource; memory requests are checked against RealMemory but not reserved,
# so several small jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Requeued jobs (scontrol requeue, --requeue on preemption/node failure) are allowed.
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or hits its time limit.
KillWait=30
# Finished jobs stay visible to squeue/scontrol for this many seconds (no accounting database here).
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  mv "$CONF.tmp" "$CONF"
  echo "$host"
}

start_munge() {
  if running "$MUNGE_PID" && munge -n </dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null; else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  fi
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
  if id munge >/dev/null 2>&1 && command -v runuser >/dev/null; then
    runuser -u munge -- munged || munged --force
  else
    munged --force
  fi
  for _ in $(seq 20); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "munged did not start (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -1; }

start() {
  if command -v sinfo >/dev/null && running "$CTLD_PID" && running "$SLURMD_PID" && [ "$(node_state)" = idle ]; then
    say "already running: $(sinfo -h -N -o '%N %T %c CPUs %m MB')"; return 0
  fi
  need_root
  install_packages
  local host; host="$(write_conf)"
  start_munge
  running "$CTLD_PID" || slurmctld -c || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
  running "$SLURMD_PID" || slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
  local state="" t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$WAIT_S" ]; do
    state="$(node_state)"
    case "$state" in
      idle|mixed|allocated) say "up: $(sinfo -h -N -o '%N %T %c CPUs %m MB')"; return 0 ;;
      down*|drain*|drained*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "node $host not idle after ${WAIT_S}s (state: '${state:-no answer}'); see $LOG_DIR/slurmctld.log and slurmd.log"
}

stop_pid() {  # stop_pid NAME PIDFILE
  running "$2" || return 0
  local pid; pid="$(cat "$2")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || { say "stopped $1"; return 0; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  say "killed $1"
}

stop() {
  need_root
  if running "$CTLD_PID"; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    scancel --full --quiet 2>/dev/null || true  # every job on this private cluster
  fi
  stop_pid slurmd "$SLURMD_PID"
  stop_pid slurmctld "$CTLD_PID"
  stop_pid munged "$MUNGE_PID"
}

status() {
  if running "$CTLD_PID" && running "$SLURMD_PID"; then
    sinfo -N -o '%N %T %c %m' && squeue
  else
    echo "not running"; return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
