#!/usr/bin/env python
"""A c10d rendezvous store that no training node hosts, so that any node may be lost and rejoin.

    python scripts/rdzv_store.py PORT

By default torchrun's c10d rendezvous keeps its store in the agent of the node that hosts
the endpoint: when that node dies the other agents lose the rendezvous and end. Run this
on a machine that stays up (a head or login node; what an etcd server is to the etcd
backend), then start every node with `RDZV_HOST=0 scripts/torchrun_node.sh THIS_HOST:PORT
NNODES ...` (docs/MULTINODE.md). It listens on every interface and serves until SIGTERM
or SIGINT; the store lives in memory only.
"""

from __future__ import annotations

import signal
import sys
from datetime import timedelta

USAGE = "usage: python scripts/rdzv_store.py PORT (a free TCP port, 1-65535)"


def port_from(argv: list[str]) -> int | None:
    if len(argv) != 1 or not argv[0].isdigit() or not 0 < int(argv[0]) < 65536:
        return None
    return int(argv[0])


def main(argv: list[str]) -> int:
    port = port_from(argv)
    if port is None:
        print(f"{USAGE} (got: {' '.join(argv) or 'nothing'})", file=sys.stderr)
        return 2
    from torch.distributed import TCPStore

    try:
        store = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    except (RuntimeError, ValueError) as exc:  # DistNetworkError is a RuntimeError
        print(f"cannot serve the rendezvous store on port {port}: {str(exc).splitlines()[0]} "
              "(pick a free port)", file=sys.stderr)
        return 2
    print(f"rendezvous store listening on port {port}", flush=True)
    caught = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del store
    return 0 if caught else 1


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main(sys.argv[1:]))
