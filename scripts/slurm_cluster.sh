#!/usr/bin/env bash
# A private one-node SLURM cluster for tests and demos: munged, slurmctld and slurmd (Debian's
# slurm-wlm 22.05 and munge), everything under DIR (slurm.conf, munge key and socket, state, spool,
# logs, pid files), the daemons on 127.0.0.1 ports chosen free at start-up. The machine's own
# configuration (/etc/slurm, /etc/munge, systemd units) is neither read nor touched.
#
#   scripts/slurm_cluster.sh up DIR      start it; prints the line to source: export SLURM_CONF=...
#   scripts/slurm_cluster.sh down DIR    cancel the jobs, stop the daemons, check nothing is left
#   scripts/slurm_cluster.sh status DIR  sinfo and squeue of the cluster
#
# One node, "tessera", with this machine's cores; jobs may oversubscribe them (srun --overcommit,
# or several jobs per core: OverSubscribe=FORCE). Exit status 77: the SLURM or munge programs are
# not installed (scripts/setup.sh installs them), which tests report as skipped.
set -euo pipefail

usage() {
  echo "usage: $0 up|down|status DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
case "$dir" in
  /*) ;;
  *) dir="$PWD/$dir" ;;
esac
conf="$dir/slurm.conf"
node=tessera
# Every command here names the configuration itself; an exported one would also mark this script.
unset SLURM_CONF
# Every process started here carries this marker in its environment, and every job process the
# cluster's configuration (SLURM_CONF, which the submitter exports): that is how `down` finds
# anything left behind without touching other processes.
marker="TESSERA_SLURM_CLUSTER=$dir"

log() { echo "[slurm_cluster] $*" >&2; }
now_ms() { date +%s%3N; }

need_programs() {
  local missing=()
  for p in munged slurmctld slurmd sinfo squeue scancel; do
    command -v "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "not installed: ${missing[*]} (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"
    exit 77
  fi
}

# Two free TCP ports on 127.0.0.1 (bound and released; the daemons take them a moment later).
free_ports() {
  python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# PIDs of processes whose environment carries our marker (ours alone: DIR is unique).
marked_pids() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [ "$pid" = $$ ] && continue
    if tr '\0' '\n' 2>/dev/null <"$f" | grep -qxF -e "$marker" -e "SLURM_CONF=$conf"; then
      echo "$pid"
    fi
  done
}

node_state() { SLURM_CONF="$conf" sinfo -h -n "$node" -o %T 2>/dev/null | head -n1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local end=$(($(date +%s) + limit))
  until "$@"; do
    if (($(date +%s) >= end)); then
      log "timed out after ${limit} s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

node_idle() { [ "$(node_state)" = idle ]; }

up() {
  need_programs
  if [ -f "$dir/run/slurmctld.pid" ] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null; then
    log "a cluster is already running in $dir"
    exit 1
  fi
  local t0
  t0=$(now_ms)
  rm -rf "$dir"
  mkdir -p "$dir"/{state,spool,log,run,munge}
  chmod 700 "$dir" "$dir/munge"
  local user
  user=$(id -un)
  read -r ctld_port slurmd_port < <(free_ports)

  # munge: its own key and socket. munged insists on private permissions for both.
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  env "$marker" munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" --num-threads=2 --force

  cat >"$conf" <<EOF
# Written by scripts/slurm_cluster.sh: a private one-node cluster under $dir.
ClusterName=tessera
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job is held for the credential lifetime (+1 s) before it may start again
# (default 120 s); sched_interval: the main scheduler's period (default 60 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
SchedulerParameters=sched_interval=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmdDebug=info
SlurmctldDebug=info
# No cgroups in containers: processes are tracked through their parents.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Preemption tests requeue jobs; a job's steps get SIGTERM, then SIGKILL after KillWait seconds.
JobRequeue=1
KillWait=5
ReturnToService=2
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF

  env "$marker" SLURM_CONF="$conf" slurmctld -f "$conf" -c
  env "$marker" SLURM_CONF="$conf" slurmd -f "$conf" -N "$node"
  if ! wait_for 60 "node $node to be idle" node_idle; then
    tail -n 20 "$dir"/log/*.log >&2 || true
    exit 1
  fi
  log "up in $(($(now_ms) - t0)) ms: slurmctld 127.0.0.1:$ctld_port, slurmd 127.0.0.1:$slurmd_port"
  SLURM_CONF="$conf" sinfo -N -o '%N %T %c %O' >&2
  echo "export SLURM_CONF=$conf"
}

# stop_pidfiles FILE...: SIGTERM to each daemon, then SIGKILL to any still there after 10 s.
stop_pidfiles() {
  local f pid pids=()
  for f in "$@"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    if ! wait_for 10 "pid $pid to exit" bash -c "! kill -0 $pid 2>/dev/null"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

down() {
  local t0 rc=0
  t0=$(now_ms)
  [ -f "$conf" ] || {
    log "no cluster in $dir"
    exit 77
  }
  if command -v scancel >/dev/null 2>&1 && [ -f "$dir/run/slurmctld.pid" ]; then
    SLURM_CONF="$conf" scancel --user="$(id -un)" 2>/dev/null || true
    wait_for 30 "the jobs to end" bash -c \
      "[ -z \"\$(SLURM_CONF='$conf' squeue -h -o %i 2>/dev/null | head -n1)\" ]" || rc=1
    if ! wait_for 15 "node $node to be idle" node_idle; then
      log "node $node is $(node_state), not idle, at shutdown"
      rc=1
    fi
    SLURM_CONF="$conf" sinfo -N -o '%N %T %c %O' >&2
  fi
  # The SLURM daemons together (each takes 1-2 s to save its state), then munge, which they use.
  stop_pidfiles "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid"
  stop_pidfiles "$dir/munge/munged.pid"
  # Anything still carrying our marker (a job step slurmd left behind) is a bug: kill and say so.
  local left
  left=$(marked_pids)
  if [ -n "$left" ]; then
    log "processes left behind, killed: $(for p in $left; do
      printf '%s(%s) ' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-60)"
    done)"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    rc=1
  fi
  log "down in $(($(now_ms) - t0)) ms"
  return $rc
}

case "$cmd" in
  up) up ;;
  down) down ;;
  status)
    SLURM_CONF="$conf" sinfo
    SLURM_CONF="$conf" squeue
    ;;
  *) usage ;;
esac
