#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for tests and laptops (docs/MULTINODE.md).
#
#   scripts/slurm_local.sh start DIR   write DIR/slurm.conf, start munged, slurmctld and slurmd;
#                                      prints `export SLURM_CONF=DIR/slurm.conf` (source it)
#   scripts/slurm_local.sh stop DIR    stop the daemons started for DIR
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (the daemons
# run as root; munged as the munge user). Partition `debug`, one node `localhost` with
# SLURM_LOCAL_CPUS CPUs (default 2). Nothing outside DIR is changed except munge's socket.
set -euo pipefail
cmd=${1:?usage: slurm_local.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: slurm_local.sh start|stop DIR}" && cd "$2" && pwd)
cpus=${SLURM_LOCAL_CPUS:-2}

stop() {
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
  done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: slurm_local.sh start|stop DIR" >&2; exit 2; }
for bin in slurmctld slurmd munged sbatch; do
  command -v "$bin" >/dev/null || { echo "slurm_local.sh: $bin not found; apt-get install slurm-wlm munge" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "slurm_local.sh: run as root (the Slurm daemons need it)" >&2; exit 3; }

mkdir -p "$dir/state" "$dir/spool" /run/munge
chown munge:munge /run/munge
if ! pgrep -u munge munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
port=${SLURM_LOCAL_PORT:-6817}
cat > "$dir/slurm.conf" <<EOF
ClusterName=pretrainlab-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$dir/slurm.conf"
stop
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 1 60); do  # wait until the node takes jobs
  if sinfo -h -o %t -p debug 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "slurm_local.sh: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
stop
exit 4
