#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from Debian's packages, for trying `megadoc submit` (and for its tests).
#
#   sudo bash slurm/local-cluster.sh install   apt-get install slurmctld slurmd slurm-client munge
#   sudo bash slurm/local-cluster.sh start     write slurm.conf, start munged, slurmctld, slurmd; wait for the node
#   sudo bash slurm/local-cluster.sh status    daemons, node and queue
#   sudo bash slurm/local-cluster.sh stop      stop the daemons (jobs still running are left to finish)
#
# Everything (config, state, spool, logs) lives under $MEGADOC_SLURM_DIR (default /var/tmp/megadoc-slurm), printed
# by every command. Clients find the config through /etc/slurm/slurm.conf (a link made when no other config is
# there) or `export SLURM_CONF=$MEGADOC_SLURM_DIR/slurm.conf`. Every command is idempotent.
#
# Works without systemd (containers, CI machines): the daemons are started directly, not as services. PID 1 may not
# reap them, so a stopped daemon can linger as a zombie: liveness is read from /proc/PID/stat, never `kill -0`.
# Requeued jobs would wait ~2 minutes to start again; cred_expire=10 and bf_interval=1 bring that to seconds.
set -euo pipefail

DIR="${MEGADOC_SLURM_DIR:-/var/tmp/megadoc-slurm}"
CONF="$DIR/slurm.conf"
PACKAGES=(slurmctld slurmd slurm-client munge)
MUNGE_PID=/run/munge/munged.pid

die() { echo "local-cluster.sh: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (the daemons run as root; try sudo)"; }

# alive PIDFILE: the process named in PIDFILE runs (a zombie counts as dead).
alive() {
  local pid state
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ "$state" != Z ] && [ "$state" != X ]
}

installed() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

cmd_install() {
  if installed; then echo "local-cluster.sh: ${PACKAGES[*]} already installed"; return; fi
  need_root install
  command -v apt-get >/dev/null || die "install needs apt-get (Debian/Ubuntu); install ${PACKAGES[*]} by hand"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have no package lists yet: update only when the first try cannot find the packages.
  apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null; } \
    || die "apt-get install ${PACKAGES[*]} failed"
  echo "local-cluster.sh: installed $(dpkg-query -W -f='slurm ${Version}' slurmctld)"
}

write_conf() {
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(slurmd -C | sed -nE 's/.*CPUs=([0-9]+).*/\1/p' | head -1)"
  mem="$(slurmd -C | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' | head -1)"
  mem=$((mem * 9 / 10))  # a bit below what slurmd measures, or the node is refused as having too little
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat >"$CONF.tmp" <<EOF
# One-node cluster written by megadoc's slurm/local-cluster.sh; rewritten on every start.
ClusterName=megadoc-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again once its credential expired (default 120 s) and a scheduler pass ran (default
# every 60 s): 10 s and 2 s bring a requeue to a restart in ~12 s.
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups in containers: track processes by parentage, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# Schedule CPUs only (CR_Core_Memory with no per-CPU memory default gives each job the whole node).
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to scontrol for 10 minutes.
MinJobAge=600
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  # Let plain `sbatch` find it, unless another config is already there.
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
  elif [ "$(readlink -f /etc/slurm/slurm.conf)" != "$(readlink -f "$CONF")" ]; then
    echo "local-cluster.sh: /etc/slurm/slurm.conf is another cluster's; use: export SLURM_CONF=$CONF"
  fi
}

start_munge() {
  alive "$MUNGE_PID" && return
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge: /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge: /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged --force
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  for _ in $(seq "$((seconds * 5))"); do
    "$@" >/dev/null 2>&1 && return
    sleep 0.2
  done
  die "$what did not come up within $seconds s (logs: $DIR/log)"
}

node_ready() { sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated)'; }

cmd_start() {
  installed || die "Slurm is not installed: run '$0 install' first"
  need_root start
  echo "local-cluster.sh: state in $DIR"
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$MUNGE_PID"; then
    echo "local-cluster.sh: already running"
    return
  fi
  write_conf
  export SLURM_CONF="$CONF"
  getent hosts "$(hostname -s)" >/dev/null \
    || echo "local-cluster.sh: warning: $(hostname -s) does not resolve; multi-process jobs rendezvous on it (add it to /etc/hosts)"
  start_munge
  wait_for 10 munged munge -n
  alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  wait_for 30 slurmctld scontrol ping
  alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
  wait_for 60 "the node" node_ready
  echo "local-cluster.sh: running; partition $(sinfo -h -o %P | tr -d '*'), $(sinfo -h -o %c) CPUs (SLURM_CONF=$CONF)"
}

# stop_daemon NAME PIDFILE: SIGTERM, then wait (up to 20 s) until it is gone or a zombie.
stop_daemon() {
  alive "$2" || return 0
  kill "$(cat "$2")" 2>/dev/null || true
  for _ in $(seq 100); do alive "$2" || { echo "local-cluster.sh: stopped $1"; return; }; sleep 0.2; done
  kill -9 "$(cat "$2")" 2>/dev/null || true
  echo "local-cluster.sh: killed $1"
}

cmd_stop() {
  need_root stop
  stop_daemon slurmd "$DIR/slurmd.pid"
  stop_daemon slurmctld "$DIR/slurmctld.pid"
  stop_daemon munged "$MUNGE_PID"
  echo "local-cluster.sh: stopped (state kept in $DIR)"
}

cmd_status() {
  echo "local-cluster.sh: state in $DIR"
  local name file
  for name in munged slurmctld slurmd; do
    file="$DIR/$name.pid"
    [ "$name" = munged ] && file="$MUNGE_PID"
    if alive "$file"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; fi
  done
  if alive "$DIR/slurmctld.pid"; then
    SLURM_CONF="$CONF" sinfo
    SLURM_CONF="$CONF" squeue
  else
    return 3
  fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
