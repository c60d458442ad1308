#!/usr/bin/env bash
# make test-slurm: a single-node SLURM cluster from Debian's packages (slurmctld, slurmd, munge),
# started in a scratch folder, runs the smoke grid through `reproduce --executor slurm` (submitit,
# one job-array task per cell) to its results.md; then a one-cell grid whose task is requeued
# mid-training (as a pre-emption does) must finish from its checkpoint; then the cluster stops. Needs root (or sudo) for
# munge and slurmd. Usage: tests/slurm/run.sh [PYTHON] (default: .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurmctld slurmd slurm-client munge
fi
$PY -c "import submitit" 2>/dev/null || $PY -m pip install -q submitit

DIR=$(mktemp -d /tmp/kdlab-slurm.XXXXXX)
OUT=${KDLAB_SLURM_OUT:-$DIR/grid}
HOST=$(hostname -s)
export SLURM_CONF=$DIR/slurm.conf
started_munge=""

stop() {
  for _ in $(seq 60); do  # let the jobs finish completing first (at most 30 s)
    [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5
  done
  pids=""
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -f "$pidfile" ] && pids="$pids $(cat "$pidfile")"
  done
  [ -n "$started_munge" ] && pids="$pids $started_munge"
  for pid in $pids; do $SUDO kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 60); do  # wait until they have gone (at most 30 s)
    alive=""; for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break; sleep 0.5
  done
  echo "cluster stopped; its configuration and logs: $DIR"
}
trap stop EXIT

# munge: the cluster's authentication (a key, then the daemon, unless one answers already).
if ! munge -n </dev/null >/dev/null 2>&1; then
  [ -f /etc/munge/munge.key ] || $SUDO mungekey --create 2>/dev/null \
    || $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
  $SUDO chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  $SUDO chmod 0400 /etc/munge/munge.key
  $SUDO -u munge /usr/sbin/munged 2>/dev/null || $SUDO /usr/sbin/munged --force
  started_munge=$(pgrep -n -x munged || true)
fi
munge -n </dev/null | unmunge >/dev/null

mkdir -p "$DIR/state" "$DIR/spool"
cat > "$SLURM_CONF" <<CONF
ClusterName=kdlab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${KDLAB_SLURMCTLD_PORT:-6817}
SlurmdPort=${KDLAB_SLURMD_PORT:-6818}
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=2
MpiDefault=none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

$SUDO /usr/sbin/slurmctld -f "$SLURM_CONF"
$SUDO /usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
  sleep 1
done
sinfo

start=$(date +%s)
KDLAB_PROFILE=smoke $PY -m kdlab reproduce smoke --out "$OUT" --executor slurm \
  --gpus-per-task 0 --time 30 --no-progress
echo "smoke grid through SLURM: $(( $(date +%s) - start )) s"
test -s "$OUT/results.md"
grep -q "| kd | cnn_tiny ← cnn_small | digits |" "$OUT/results.md"
cat "$OUT/results.md"

# A task requeued mid-training (what a pre-emption does) runs again and resumes from its checkpoint:
# the epochs before the requeue are kept as they were, not trained again.
cat > "$DIR/requeue.yaml" <<GRID
name: requeue
profile: smoke
seeds: [0]
settings: {epochs: 200}
experiments: [{method: independent, models: [cnn_tiny]}]
GRID
KDLAB_PROFILE=smoke $PY -m kdlab reproduce "$DIR/requeue.yaml" --out "$DIR/requeue" --direct \
  --executor slurm --gpus-per-task 0 --time 30 --no-progress > "$DIR/requeue.log" 2>&1 &
grid=$!
metrics=""
for _ in $(seq 240); do
  metrics=$(ls "$DIR"/requeue/cells/*/runs/main-seed0/metrics.jsonl 2>/dev/null || true)
  [ -n "$metrics" ] && [ "$(wc -l < "$metrics")" -ge 3 ] && break
  sleep 0.5
done
[ -n "$metrics" ] || { echo "the requeue grid never started training"; cat "$DIR/requeue.log"; exit 1; }
before=$(head -n 2 "$metrics")
task=$(squeue -h -o %i | head -n 1)
scontrol requeue "$task"
echo "requeued task $task after $(wc -l < "$metrics") epochs"
# SLURM holds a requeued job back for a while before it may start again; a test need not wait.
for _ in $(seq 60); do
  scontrol update jobid="$task" StartTime=now 2>/dev/null && break
  sleep 0.5
done
wait "$grid" || { cat "$DIR/requeue.log"; exit 1; }
restarts=$(scontrol show job -o "$task" | grep -o 'Restarts=[0-9]*')
echo "$task: $restarts"
test "$restarts" = "Restarts=1"  # killed and run again, not finished in its grace period
test "$(head -n 2 "$metrics")" = "$before"  # the epochs before the requeue were not redone
$PY - "$metrics" <<CHECK
import json, sys
epochs = [json.loads(line)["epoch"] for line in open(sys.argv[1])]
assert epochs == list(range(1, 201)), epochs
print("the requeued task resumed: epochs 1..200, each once")
CHECK
