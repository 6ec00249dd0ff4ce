#!/usr/bin/env bash
# Stops the one-node SLURM cluster that scripts/slurm_cluster_start.sh started from DIR (default:
# ${TMPDIR:-/tmp}/ssl_bench_slurm), by the daemons' pid files: slurmd, slurmctld, then munged.
# Jobs still running are killed with slurmd. DIR (its configuration, state and logs) is kept.
#
#   scripts/slurm_cluster_stop.sh [DIR]
set -euo pipefail
DIR=$(realpath -m "${1:-${TMPDIR:-/tmp}/ssl_bench_slurm}")
stopped=0
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    stopped=$((stopped + 1))
  fi
  rm -f "$pidfile"
done
echo "stopped $stopped daemon(s) of the cluster in $DIR"
