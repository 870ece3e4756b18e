"""A tiny hardened pysyncobj node for the durability tests (no HTTP, no broker state).

    python -m tests.support.durability_node --id n1 --raft 127.0.0.1:P --peer n2=127.0.0.1:Q ...
        --data DIR --mode write|verify|idle [--acks FILE] [--out FILE] [--stats FILE]
        [--payload-bytes N] [--window W] [--max-entries M] [--secret HEX]
        [--conf JSON (SyncObjConf overrides)]

State: the list of applied ids ("tag:seq"). One @replicated method takes one bytes argument
(msgpack [tag, seq, padding]), exactly like the broker's apply_batch.

write:  submits entries with `window` in flight; each SUCCESS appends "tag:seq" to --acks
        (written and flushed before the next ack: kill -9 keeps it, it is the client's record).
verify: waits for a leader, commits a barrier entry (so everything committed before is applied
        here), writes {"ids": [...], "stats": {...}} to --out and exits 0.
idle:   a member that only follows (for the cluster tests).
Every mode writes journal/transport counters to --stats twice a second.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, replicated
from pysyncobj.transport import TCPTransport

from replication import hardening, patches
from replication import journal as journal_mod
from replication.journal import DurableJournal
from replication.transport import DurableTransport


class StateBox:
    """Set before SyncObj.__init__: never pickled; snapshots go through SnapshotHooks."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def encode(self) -> bytes:
        return bytes(msgpack.packb(self.ids))

    def install(self, data: bytes) -> None:
        self.ids = list(msgpack.unpackb(data))


class DurabilityNode(SyncObj):  # type: ignore[misc]
    def __init__(self, box: StateBox, args: dict[str, Any]) -> None:
        self._box = box
        super().__init__(**args)

    @replicated  # type: ignore[misc]
    def apply_batch(self, blob: bytes) -> str:
        tag, seq, _pad = msgpack.unpackb(blob)
        item = f"{tag}:{seq}"
        self._box.ids.append(item)
        return item


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--id", required=True)
    p.add_argument("--raft", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--data", required=True)
    p.add_argument("--mode", choices=["write", "verify", "idle"], required=True)
    p.add_argument("--acks")
    p.add_argument("--out")
    p.add_argument("--stats")
    p.add_argument("--payload-bytes", type=int, default=100)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--max-entries", type=int, default=0)
    p.add_argument("--secret", default="")
    p.add_argument("--conf", default="{}")
    p.add_argument("--compaction-bytes", type=int, default=0)
    p.add_argument("--retry", action="store_true", help="resubmit entries that failed")
    p.add_argument("--sizes", default="", help="comma list of payload sizes, one entry each")
    return p.parse_args(argv)


def build(ns: argparse.Namespace) -> tuple[DurabilityNode, StateBox]:
    if os.environ.get("RAFTMQ_TEST_STOCK_RESEND") == "1":  # sensitivity runs: stock behaviour
        DurableTransport._absorb_resend = lambda self, msg: msg
    if os.environ.get("RAFTMQ_TEST_STOCK_CHUNKS") == "1":  # sensitivity runs: stock labels
        DurableTransport._send_chunk = lambda self, node, msg: TCPTransport.send(self, node, msg)
    if os.environ.get("RAFTMQ_TEST_STOCK_BACKTRACK") == "1":  # sensitivity runs: stock replies
        DurableTransport._apply_floor = lambda self, node, message: message
    if os.environ.get("RAFTMQ_TEST_NO_FDATASYNC") == "1":  # sensitivity runs: journal unsynced
        journal_mod.fdatasync = lambda fd: None
    if os.environ.get("RAFTMQ_TEST_SYNC_PER_MESSAGE") == "1":  # measurement: the spike's way
        DurableTransport._release_acks_at_round_end = False
    if os.environ.get("RAFTMQ_TEST_STOCK_CLEAR") == "1":  # sensitivity runs: stock clear()
        DurableJournal._finish_clear = lambda self, prev, last: (
            setattr(self, "_clear_pending", None) or self._rewrite([prev, last], 2)
        )
    hardening.install_patches(secret=bytes.fromhex(ns.secret) if ns.secret else None)
    box = StateBox()
    peers = dict(item.split("=", 1) for item in ns.peer)
    peers[ns.id] = ns.raft
    args = hardening.build_syncobj_args(
        node_id=ns.id,
        raft_addr=ns.raft,
        peers=peers,
        data_dir=Path(ns.data),
        snapshot_hooks=hardening.SnapshotHooks(encode=box.encode, install=box.install),
        **({"log_compaction_bytes_max": ns.compaction_bytes} if ns.compaction_bytes else {}),
        **json.loads(ns.conf),
    )
    return DurabilityNode(box, args), box


def stats_of(node: DurabilityNode) -> dict[str, Any]:
    journal = patches.journal_for(node.conf.journalFile)
    s = journal.stats
    transport = node._SyncObj__transport
    return {
        **hardening.durability_stats(Path(node.conf.journalFile).parent),
        "adds": s.adds,
        "records_written": s.records_written,
        "dedup_skips": s.dedup_skips,
        "truncations_logical": s.truncations_logical,
        "truncations_physical": s.truncations_physical,
        "syncs": s.syncs,
        "rewrites": s.rewrites,
        "torn_bytes_dropped": s.torn_bytes_dropped,
        "round_syncs": transport.round_syncs,
        "rounds": transport.rounds,
        "round_sync_s_total": transport.round_sync_s_total,
        "chunks_relabelled": transport.chunks_relabelled,
        "resends_absorbed": transport.resends_absorbed,
        "entries_absorbed": transport.entries_absorbed,
        "backtracks_kept": transport.backtracks_kept,
        "commit": node.raftCommitIndex,
        "applied": node.raftLastApplied,
        "term": node.raftCurrentTerm,
        "leader": node._isLeader(),
        "frames_rejected": patches.frame_codec().rejected_frames,
        "pid": os.getpid(),
    }


def stats_loop(node: DurabilityNode, path: str) -> None:
    while True:
        tmp = path + ".tmp"
        Path(tmp).write_text(json.dumps(stats_of(node)))
        os.replace(tmp, path)
        time.sleep(0.5)


def wait_leader(node: DurabilityNode, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while node._getLeader() is None:
        if time.monotonic() > deadline:
            raise SystemExit("no leader")
        time.sleep(0.02)


def run_writer(node: DurabilityNode, ns: argparse.Namespace) -> None:
    acks = open(ns.acks, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    slots = threading.Semaphore(ns.window)
    lock = threading.Lock()
    sizes = [int(x) for x in ns.sizes.split(",") if x]

    def submit(blob: bytes) -> None:
        def done(result: Any, err: int) -> None:
            if err == FAIL_REASON.SUCCESS:
                with lock:
                    acks.write(result + "\n")
                    acks.flush()
                slots.release()
            elif ns.retry:
                submit(blob)  # outcome unknown or not applied: submit again (ids may repeat)
            else:
                slots.release()

        node.apply_batch(blob, callback=done)

    seq = 0
    while not ns.max_entries or seq < ns.max_entries:
        # pysyncobj has no timeouts: a command acknowledged by a leader that then died waits
        # for its index forever. After 2 s without a free slot, submit anyway.
        slots.acquire(timeout=2)
        size = sizes[seq % len(sizes)] if sizes else ns.payload_bytes
        submit(msgpack.packb([ns.id, seq, b"x" * size]))
        seq += 1
    for _ in range(ns.window):
        slots.acquire()


def run_verify(node: DurabilityNode, box: StateBox, ns: argparse.Namespace) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wait_leader(node, 30)
        try:
            node.apply_batch(msgpack.packb(["barrier", ns.id, b""]), sync=True, timeout=5)
            break
        except Exception:  # noqa: BLE001 - retried until the deadline
            time.sleep(0.1)
    else:
        raise SystemExit("barrier never committed")
    out = {"ids": list(box.ids), "stats": stats_of(node)}
    Path(ns.out + ".tmp").write_text(json.dumps(out))
    os.replace(ns.out + ".tmp", ns.out)  # the test polls for the file: never show it half-written


def main(argv: list[str]) -> None:
    ns = parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # DNode.describe: where it hangs
    node, box = build(ns)
    if ns.stats:
        threading.Thread(target=stats_loop, args=(node, ns.stats), daemon=True).start()
    wait_leader(node, 60)
    if ns.mode == "write":
        run_writer(node, ns)
    elif ns.mode == "verify":
        run_verify(node, box, ns)  # then stay up: the others may still need our vote
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
