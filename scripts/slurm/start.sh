#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (localhost), for the SLURM integration tests and for trying
# the launcher configs without a cluster. Idempotent: installs slurm-wlm + munge with apt if missing, writes a
# minimal slurm.conf for this host's CPUs and memory, starts munged, slurmctld and slurmd (no systemd), and waits
# until the node accepts jobs. Needs root. Stop with scripts/slurm/stop.sh.
#
#   sudo scripts/slurm/start.sh          # then: sinfo; srun -n 2 hostname
set -euo pipefail

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARK="# written by grn scripts/slurm/start.sh"
STATE=/var/spool/grn-slurm
NODE="$(hostname -s)"

log() { echo "[slurm/start] $*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "[slurm/start] must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

# ---- install -----------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge with apt"
  start=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
  fi
  log "installed in $(( $(date +%s) - start )) s"
fi

# ---- munge (authentication between the SLURM daemons and clients) --------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating a munge key"
  if command -v mungekey >/dev/null; then mungekey --create --force; else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- munged --force
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
fi

# ---- slurm.conf ----------------------------------------------------------------------------------------------
# nproc honours OMP_NUM_THREADS (set to 1 in tests): count the CPUs this machine lets us use
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" /var/log/slurm
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
  echo "[slurm/start] $CONF exists and was not written by this script: not touching it" >&2
  exit 1
fi
cat > "$CONF.tmp" <<CONF
$MARK
ClusterName=grn-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# requeued jobs wait cred_expire seconds before they may start again (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups in containers: plain process tracking, no task binding or accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# pre-empted jobs may requeue themselves; they start again almost at once
JobRequeue=1
MinJobAge=30
# a small local cluster: look for startable jobs every 2 s (a requeued job starts soon after it may)
SchedulerParameters=nohold_on_prolog_fail,sched_interval=2,bf_interval=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
if ! cmp -s "$CONF.tmp" "$CONF"; then mv "$CONF.tmp" "$CONF"; CHANGED=1; else rm "$CONF.tmp"; CHANGED=0; fi

# ---- daemons -------------------------------------------------------------------------------------------------
running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [[ $CHANGED == 1 ]] && { running "$STATE/slurmctld.pid" || running "$STATE/slurmd.pid"; }; then
  # some settings (AuthInfo) are read only at start-up: restart rather than `scontrol reconfigure`
  log "configuration changed: restarting slurmctld and slurmd"
  for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
    if running "$pidfile"; then
      pid=$(cat "$pidfile"); kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
fi
if ! running "$STATE/slurmctld.pid"; then log "starting slurmctld"; slurmctld; fi
if ! running "$STATE/slurmd.pid"; then log "starting slurmd"; slurmd; fi

for _ in $(seq 100); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated) log "node $NODE is $state ($CPUS CPUs)"; exit 0 ;;  # a trailing * = not responding yet
    down*|drain*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.2
done
echo "[slurm/start] the node did not become ready; see /var/log/slurm/*.log" >&2
exit 1
