#!/usr/bin/env bash
# One node of a multi-node `pretrainlab train` job under torchrun's elastic agent (c10d rendezvous).
# Run it on every node; a node that is lost can be started again alone and the job continues.
#
#   scripts/torchrun_node.sh HOST:PORT NNODES [pretrainlab train options, e.g. -c CONFIG --set K=V ...]
#
# HOST:PORT is the rendezvous store, hosted by the torchrun agent on HOST (set RDZV_HOST=1 there
# when HOST does not name that machine, e.g. 127.0.0.1 on a one-machine test; 0 on the others).
# Environment: RDZV_ID (job id, default pretrainlab), NPROC_PER_NODE (default 1), MAX_RESTARTS
# (worker restarts this agent allows, default 3), LOCAL_ADDR (the address peers reach this node at),
# RDZV_CONF (extra --rdzv_conf items, e.g. keep_alive_interval=1,keep_alive_max_attempt=3),
# PYTHON (default python).
#
# When one node dies, the survivors' workers fail on the broken collective; each survivor's agent
# starts a new rendezvous round (one of its MAX_RESTARTS) and waits there, up to join_timeout
# (600 s by default), for the node to be started again with this same command. Then every worker
# starts afresh and `--resume auto` continues from the newest complete checkpoint.
#
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: torch 2.13's default (the agent of rank 0 shares its
# TCPStore with the workers) caches the store address of the first round and writes it only in
# that round's key space, so a node that joins a later round waits forever for the
# .../torch.rendezvous.<id>.<round>/MASTER_ADDR key (60 s store timeout, then both agents fail).
# With sharing off, rank 0's agent publishes a fresh address every round (docs/MULTINODE.md).
set -euo pipefail

if [ $# -lt 2 ] || [[ "$1" != *:* ]] || ! [[ "$2" =~ ^[0-9]+(:[0-9]+)?$ ]]; then
  echo "usage: scripts/torchrun_node.sh HOST:PORT NNODES [pretrainlab train options] (got: $*)" >&2
  exit 2
fi
ENDPOINT=$1 NNODES=$2
shift 2

CONF="${RDZV_HOST:+is_host=$RDZV_HOST}"
[ -n "${RDZV_CONF:-}" ] && CONF="${CONF:+$CONF,}$RDZV_CONF"

export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc_per_node "${NPROC_PER_NODE:-1}" \
  --rdzv_backend c10d --rdzv_endpoint "$ENDPOINT" --rdzv_id "${RDZV_ID:-pretrainlab}" \
  ${CONF:+--rdzv_conf "$CONF"} ${LOCAL_ADDR:+--local-addr "$LOCAL_ADDR"} \
  --max_restarts "${MAX_RESTARTS:-3}" \
  -m pretrainlab.cli train "$@" --resume auto
