#!/usr/bin/env bash
# sudo bash scripts/slurm/local_cluster.sh start|stop|status
#
# A real Slurm cluster on this machine, for trying the sbatch scripts and the Hydra launcher and for the tests
# marked `slurm`: two nodes, node1 and node2, each a slurmd on this host (Debian's slurmd is built with
# multiple-slurmd support: `scontrol show config` says MULTIPLE_SLURMD = Yes), each with this host's CPUs and
# memory, so multi_node.sbatch runs on two nodes for real. SFT_SLURM_NODES=1 makes one. `start` installs the
# Debian packages slurmctld slurmd slurm-client munge when missing, writes /etc/slurm/slurm.conf for this host
# (its CPUs and memory as slurmd detects them), starts munged, slurmctld and one slurmd per node, and waits until
# `sinfo` shows every node idle. `stop` cancels every job and
# stops the daemons it started. Both are idempotent. Needs root (apt-get, daemons); Debian/Ubuntu only.
#
# It refuses to overwrite a slurm.conf it did not write (a real cluster's); SFT_SLURM_FORCE=1 overrides.
# Daemon logs: /var/log/slurm/slurmctld.log, slurmd-<node>.log. Job state is not kept across `start` (slurmctld -c).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARK="# written by sft scripts/slurm/local_cluster.sh"
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
NODES="${SFT_SLURM_NODES:-2}"  # slurmds on this host, one per node
NODE_NAMES=$(seq -f 'node%g' 1 "$NODES")
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
  mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld
  local n i=0 node_lines=""
  for n in $NODE_NAMES; do
    i=$((i + 1))
    mkdir -p "/var/spool/slurmd/$n"
    # each slurmd listens on its own port; all of them are this host
    node_lines+="NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"$'\n'
  done
  cat > "$CONF.tmp" <<CONF
$MARK for host $host ($cpus CPUs, $mem MB), $NODES node(s).
ClusterName=sft-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
# %n: the node's name, one of each per slurmd (slurmd -N <node>)
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
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
${node_lines}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
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

node_state() { sinfo -h -N -o %T 2>/dev/null | sort -u | paste -sd, -; }  # e.g. "allocated,idle"
nodes_up() { [ -n "$1" ] && [ -z "$(echo "$1" | tr , '\n' | grep -vxE 'idle|mixed|allocated')" ]; }
node_list() { sinfo -h -N -o %N 2>/dev/null | sort -u | paste -sd, -; }
slurmd_pid() { echo "/run/slurmd-$1.pid"; }
slurmds_running() {
  local n; for n in $NODE_NAMES; do running "$(slurmd_pid "$n")" || return 1; done
}

start() {
  local want; want="$(echo $NODE_NAMES | tr ' ' ,)"
  if command -v sinfo >/dev/null && running "$CTLD_PID" && slurmds_running && nodes_up "$(node_state)" &&
     [ "$(node_list)" = "$want" ]; then
    say "already running: $(sinfo -h -N -o '%N %T %c CPUs %m MB' | paste -sd, -)"; return 0
  fi
  if running "$CTLD_PID" && grep -qF "$MARK" "$CONF" 2>/dev/null && [ "$(node_list)" != "$want" ]; then
    say "restarting: the running cluster has nodes '$(node_list)', not $want"; stop  # other nodes: cancels its jobs
  fi
  need_root
  install_packages
  local host; host="$(write_conf)"
  start_munge
  running "$CTLD_PID" || slurmctld -c || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
  local n
  for n in $NODE_NAMES; do
    running "$(slurmd_pid "$n")" || slurmd -N "$n" || die "slurmd -N $n failed to start (see $LOG_DIR/slurmd-$n.log)"
  done
  local state="" t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$WAIT_S" ]; do
    state="$(node_state)"
    if nodes_up "$state"; then say "up: $(sinfo -h -N -o '%N %T %c CPUs %m MB' | paste -sd, -)"; return 0; fi
    case "$state" in
      *down*|*drain*) scontrol update nodename="$(echo $NODE_NAMES | tr ' ' ,)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "nodes $NODE_NAMES not idle after ${WAIT_S}s (state: '${state:-no answer}'); see $LOG_DIR/slurmctld.log and slurmd-*.log"
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
  local pidfile
  for pidfile in /run/slurmd.pid /run/slurmd-*.pid; do  # every slurmd this script started, whatever NODES is now
    stop_pid "slurmd ($(basename "$pidfile" .pid))" "$pidfile"
  done
  stop_pid slurmctld "$CTLD_PID"
  stop_pid munged "$MUNGE_PID"
}

status() {
  if running "$CTLD_PID" && slurmds_running; then
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
