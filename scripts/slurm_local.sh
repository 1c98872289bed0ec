#!/usr/bin/env bash
# A single-node SLURM on this machine, for the `slurm` tests and for trying the launcher:
#   scripts/slurm_local.sh up      install (root + apt) and start munged, slurmctld, slurmd; wait idle
#   scripts/slurm_local.sh down    cancel its jobs, stop what `up` started, remove what it wrote
#   scripts/slurm_local.sh status  the node's state, or why there is none
# Idempotent: `up` on a running cluster and `down` on a stopped one do nothing. It stops only what it
# started (recorded in $BRISK_SLURM_STATE) and never touches a slurm.conf it did not write.
set -euo pipefail

STATE="${BRISK_SLURM_STATE:-/tmp/brisk-slurm}"
CONF="${BRISK_SLURM_CONF:-/etc/slurm/slurm.conf}"
MARK="# written by brisk scripts/slurm_local.sh"
WAIT_S="${BRISK_SLURM_WAIT_S:-90}"
export SLURM_CONF="$CONF"

say() { echo "slurm_local: $*" >&2; }

alive() { # alive PIDFILE: the process in PIDFILE runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() { timeout 10 sinfo -h -o %t 2>/dev/null | head -n 1 || true; }

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

logs() {
  for f in "$STATE/slurmctld.log" "$STATE/slurmd.log" /var/log/munge/munged.log; do
    [ -f "$f" ] && { echo "--- $f (last 25 lines)"; tail -n 25 "$f"; }
  done
  return 0
}

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd sinfo munged; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "missing ${missing[*]}: install Debian's slurmctld slurmd slurm-client munge (needs root)"
    return 1
  fi
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  local host mem cpus
  host="$(hostname -s)"
  cpus="$(nproc)"
  # slurmd refuses a node that claims more memory than it has: stay 5% under `free`
  mem="$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')"
  mkdir -p "$(dirname "$CONF")" "$STATE/spool" "$STATE/ctld"
  cat >"$CONF" <<EOF
$MARK; removed by \`down\`
ClusterName=brisk
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job starts again after ~20 s instead of > 120 s
AuthInfo=cred_expire=20
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
# cores, not memory: with CR_Core_Memory and no DefMemPerCPU every job takes the whole node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# no cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  munge_ok && return 0
  say "starting munged"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || true; }
  runuser -u munge -- munged
  for _ in $(seq 50); do
    if [ -s /run/munge/munged.pid ] && munge_ok; then
      # this copy marks munged as ours: `down` stops it by this pid, and only then
      cp /run/munge/munged.pid "$STATE/munged.pid"
      return 0
    fi
    sleep 0.1
  done
  say "munged started but munge -n | unmunge still fails"
  return 1
}

stop_pidfile() { # stop_pidfile NAME PIDFILE: TERM, then KILL after 10 s
  local pid
  alive "$2" || return 0
  pid="$(cat "$2")"
  say "stopping $1 ($pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

up() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    case "$(node_state)" in
      idle* | mix* | alloc*) say "a SLURM configured by $CONF answers; using it"; return 0 ;;
    esac
    say "$CONF exists and was not written here: not touching it (set BRISK_SLURM_CONF)"
    return 1
  fi
  mkdir -p "$STATE"
  if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && munge_ok; then
    case "$(node_state)" in idle* | mix* | alloc*) say "already up"; return 0 ;; esac
  fi
  install_packages
  start_munge
  write_conf
  if ! alive "$STATE/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld -c -f "$CONF" # -c: forget the jobs of an earlier cluster
  fi
  if ! alive "$STATE/slurmd.pid"; then
    say "starting slurmd"
    slurmd -f "$CONF"
  fi
  local state=""
  for _ in $(seq $((WAIT_S * 2))); do
    state="$(node_state)"
    case "$state" in idle*) say "node idle"; return 0 ;; esac
    # a node left down by an earlier run comes back at once
    case "$state" in down* | drain*) scontrol update nodename="$(hostname -s)" state=resume \
      >/dev/null 2>&1 || true ;; esac
    sleep 0.5
  done
  say "the node is not idle after ${WAIT_S} s (sinfo: '${state:-no answer}')"
  logs >&2
  down
  return 1
}

down() {
  if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" && alive "$STATE/slurmctld.pid"; then
    local jobs
    jobs="$(timeout 10 squeue -h -o %i 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
      say "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 40); do
        [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null || true)" ] && break
        sleep 0.5
      done
    fi
  fi
  stop_pidfile slurmd "$STATE/slurmd.pid"
  stop_pidfile slurmctld "$STATE/slurmctld.pid"
  # munged only when `up` started it, by its pidfile: two munged sharing /run/munge break each other
  if [ -f "$STATE/munged.pid" ]; then
    stop_pidfile munged "$STATE/munged.pid"
    rm -f "$STATE/munged.pid"
  fi
  if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; then
    rm -f "$CONF"
  fi
  return 0
}

status() {
  local state
  state="$(node_state)"
  if [ -n "$state" ]; then echo "$state"; else echo "no SLURM answers (sinfo)"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
