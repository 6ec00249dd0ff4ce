#!/usr/bin/env bash
# Starts a one-node SLURM cluster on this machine, for trying the grid runner's SLURM executor and
# for its tests: munged, slurmctld and slurmd with their configuration, state, logs and pid files
# in one folder (default: ${TMPDIR:-/tmp}/ssl_bench_slurm). The node is this host with its real
# CPU count and memory; two partitions: "debug" (the default, at most 1 day a job) and "short" (at
# most 10 minutes).
#
#   scripts/slurm_cluster_start.sh [DIR]      # then: export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_cluster_stop.sh [DIR]
#
# Started again on the same DIR, it keeps the cluster's state (its jobs); remove DIR for a new one.
# Needs Debian's slurm-wlm and munge packages (apt-get install -y slurm-wlm munge) and root: slurmd
# starts every job as its user. No accounting database: sacct does not work, squeue shows a job
# for MinJobAge (10 minutes) after it ended.
set -euo pipefail
DIR=$(realpath -m "${1:-${TMPDIR:-/tmp}/ssl_bench_slurm}")

# The first two free ports from SLURM_PORT (default 6817, SLURM's own): slurmctld's and slurmd's.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=${SLURM_PORT:-6817}
while in_use "$port" || in_use $((port + 1)); do port=$((port + 2)); done
CTLD_PORT=$port
SLURMD_PORT=$((port + 1))

for program in munged slurmctld slurmd sinfo; do
  command -v "$program" >/dev/null || {
    echo "error: $program is not installed; install SLURM with: apt-get install -y slurm-wlm munge" >&2
    exit 1; }
done
if [ "$(id -u)" != 0 ]; then
  echo "error: slurmd must run as root (it starts each job as the user who submitted it); run this script with sudo" >&2
  exit 1
fi
if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
  echo "a cluster is already running from $DIR; export SLURM_CONF=$DIR/slurm.conf"
  exit 0
fi

mkdir -p "$DIR"/{munge,state,spool,log}
chmod 700 "$DIR/munge"
# munged: its own key, socket and files in DIR (it refuses a key that others can read).
if [ ! -f "$DIR/munge/munge.key" ]; then
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$DIR/munge/munge.key"
munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
  --log-file="$DIR/log/munged.log" --pid-file="$DIR/munge/munged.pid" \
  --seed-file="$DIR/munge/munged.seed"

# The node as slurmd sees it (CPUs, sockets, cores, threads, memory), less 5% memory for the system.
node=$(slurmd -C | head -n 1)
host=$(echo "$node" | sed -n 's/^NodeName=\([^ ]*\).*/\1/p')
memory=$(echo "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
node=$(echo "$node" | sed "s/RealMemory=[0-9]*/RealMemory=$((memory * 95 / 100))/")
cpus=$(echo "$node" | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p')

cat > "$DIR/slurm.conf" <<CONF
# A one-node cluster made by scripts/slurm_cluster_start.sh.
ClusterName=ssl-bench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((memory * 95 / 100 / cpus))
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# A cancelled job's processes get SIGTERM, then SIGKILL after KillWait seconds.
KillWait=10
# Ended jobs stay visible to squeue and scontrol for MinJobAge seconds.
MinJobAge=600
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=1-00:00:00 State=UP
PartitionName=short Nodes=ALL MaxTime=00:10:00 State=UP
CONF

export SLURM_CONF="$DIR/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "SLURM cluster up: node $host ($cpus CPUs), partitions debug (default) and short; files in $DIR"
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "error: the node did not come up within 30 s; see $DIR/log/slurmctld.log and $DIR/log/slurmd.log" >&2
sinfo -N >&2 || true
exit 1
