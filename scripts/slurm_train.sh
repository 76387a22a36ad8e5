#!/usr/bin/env bash
# Multi-node training under Slurm: one torchrun launcher per node, c10d rendezvous on the first node.
#
#   sbatch --nodes=4 scripts/slurm_train.sh configs/dense_1b.yaml [--set KEY=VALUE ...]
#
# The job resumes automatically: `--resume auto` continues from the newest complete checkpoint,
# so a requeued or resubmitted job picks up where the last one stopped. Exit code 75 means a guard
# paused the run on purpose (inspect it before resubmitting); 2 is a configuration/data error;
# 3 means the guard stopped the run (rollback limit).
#SBATCH --job-name=pretrainlab
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG [--set KEY=VALUE ...]}
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
mkdir -p logs

# NCCL settings that usually matter on InfiniBand clusters; adjust to your fabric.
export NCCL_ASYNC_ERROR_HANDLING=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

srun --kill-on-bad-exit=1 torchrun \
  --nnodes="$SLURM_NNODES" \
  --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
  --rdzv_id="$SLURM_JOB_ID" \
  --max_restarts=3 \
  -m pretrainlab.cli train "$CONFIG" --resume auto "$@"
