#!/usr/bin/env bash
# Stop what scripts/slurm/start.sh started (slurmd, slurmctld, munged), by their pid files. Packages stay.
set -uo pipefail
STATE=/var/spool/grn-slurm

stop_pidfile() {  # stop_pidfile NAME PIDFILE
  local pidfile=$2
  [[ -s "$pidfile" ]] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    echo "[slurm/stop] stopping $1 ($pid)"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
}

if command -v scancel >/dev/null && [[ -s $STATE/slurmctld.pid ]]; then
  scancel --user=root >/dev/null 2>&1 || true   # no job outlives the cluster
fi
stop_pidfile slurmd "$STATE/slurmd.pid"
stop_pidfile slurmctld "$STATE/slurmctld.pid"
stop_pidfile munged /run/munge/munged.pid
exit 0
