#!/usr/bin/env bash
# Multi-node training under Slurm: srun starts one task per GPU; env:// rendezvous on the first node.
#
#   sbatch --nodes=4 scripts/slurm_train.sh configs/dense_1b.yaml [--set KEY=VALUE ...]
#
# Preemption and time limits (docs/MULTINODE.md, "Signals, preemption and requeue"):
# five minutes before the time limit Slurm sends SIGUSR1 to this script (--signal=B:USR1@300),
# which forwards it to every task; Slurm preemption and scancel send SIGTERM to the tasks.
# Every rank then stops after the same step, they save a checkpoint together, and each exits 99.
# On 99 this script requeues the job, which continues with `--resume auto`.
#
# Exit codes: 0 finished; 99 checkpointed on a signal (requeued here); 130 Ctrl-C (saved);
# 75 a guard paused the run (inspect it before resubmitting); 2 configuration/data error;
# 3 the guard stopped the run (rollback limit).
#
# Tasks are started by srun, not torchrun: torchrun reports 1 for any failed worker (the codes above
# are lost) and on SIGTERM SIGKILLs its workers after --shutdown_timeout (30 s).
#SBATCH --job-name=pretrainlab
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out  # in the submit directory: Slurm opens it before this script runs, so no subfolder
set -uo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG [--set KEY=VALUE ...]}
shift
PYTHON=${PYTHON:-python}
EXIT_PREEMPTED=99  # pretrainlab.train.interrupts.EXIT_PREEMPTED
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-29500}


# NCCL settings that usually matter on InfiniBand clusters; adjust to your fabric.
export NCCL_ASYNC_ERROR_HANDLING=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: $CONFIG $*"
# Once one task ends, the others get 60 s (--wait) and are then killed: a crashed rank does not leave the rest
# hanging in a collective, and after a signal every rank still finishes its exit (--kill-on-bad-exit=1 would kill
# ranks still leaving after the others exited 99, and the job would not be requeued).
# shellcheck disable=SC2016  # the task's variables expand on each task, not here
srun --kill-on-bad-exit=0 --wait=60 bash -c '
  export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
  exec "$0" -m pretrainlab.cli train -c "$@" --resume auto' "$PYTHON" "$CONFIG" "$@" &
SRUN=$!
forward() {  # srun passes the signal on to every task
  echo "got $1: asking the run to checkpoint and stop"
  kill -s "$1" "$SRUN" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

rc=0
wait "$SRUN" || rc=$?
while kill -0 "$SRUN" 2>/dev/null; do  # a trapped signal interrupts `wait`: wait for srun itself
  rc=0
  wait "$SRUN" || rc=$?
done
if [ "$rc" -eq "$EXIT_PREEMPTED" ]; then
  echo "checkpointed on a signal (exit $rc): requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
