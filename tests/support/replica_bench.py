"""Measure the replica alone (no HTTP): proposals/s and latency from the leader, 3 nodes.

    .venv/bin/python -m tests.support.replica_bench [--count N] [--payload-bytes B]
        [--in-flight 1,64] [--raft-conf JSON]

Starts 3 tests/support/replica_node.py processes in a tmp dir, proposes `test.record` commands
of B payload bytes from inside the leader process with K in flight, prints one JSON line per K,
and kills every process it started.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from tests.support.replica_cluster import Cluster


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--payload-bytes", type=int, default=256)
    ap.add_argument("--in-flight", default="1,64")
    ap.add_argument("--raft-conf", default="{}")
    ap.add_argument("--threading-mode", default="thread", choices=["thread", "loop"])
    ap.add_argument("--no-leader-early-sync", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), size=args.nodes, extra=["--raft-conf", args.raft_conf,
                                               "--threading-mode", args.threading_mode,
                                               *(["--no-leader-early-sync"]
                                                 if args.no_leader_early_sync else [])])
        try:
            cluster.start()
            leader = cluster.wait_stable()
            for k in [int(x) for x in args.in_flight.split(",")]:
                pids = {n.id: n.proc.pid for n in cluster.live() if n.proc is not None}
                cpu0 = {nid: cpu_s(pid) for nid, pid in pids.items()}
                t0 = time.monotonic()
                out = leader.call("POST", "/bench", {"count": args.count, "in_flight": k,
                                                     "payload_bytes": args.payload_bytes},
                                  timeout_s=600)
                wall = time.monotonic() - t0
                out["cpu_cores"] = {nid: round((cpu_s(pid) - cpu0[nid]) / wall, 2)
                                    for nid, pid in pids.items()}
                out["leader"] = leader.id
                out["term"] = leader.status()["term"]
                print(json.dumps(out), flush=True)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
