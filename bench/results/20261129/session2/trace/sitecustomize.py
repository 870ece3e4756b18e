"""Timestamp trace of the one-at-a-time commit path (a harness, not product code).

Put this directory first on PYTHONPATH with RAFTMQ_TRACE_DIR=/some/dir set: every Python
process that can import the repo wraps a few functions and records (event, time.monotonic())
pairs; CLOCK_MONOTONIC is one clock for every process on the host, so the events of the
leader and the followers line up. Each process rewrites <dir>/<pid>.json every second.
`analyse.py <dir>` prints the per-phase medians. Nothing here is imported without the env var.
"""

from __future__ import annotations

import json
import os
import threading
import time

DIR = os.environ.get("RAFTMQ_TRACE_DIR")
EVENTS: list[tuple[str, float, int]] = []


def rec(name: str, value: int = 0) -> None:
    EVENTS.append((name, time.monotonic(), value))


def dump_forever() -> None:
    path = os.path.join(DIR or "/tmp", f"{os.getpid()}.json")
    while True:
        time.sleep(1.0)
        if EVENTS:
            with open(path + ".tmp", "w") as f:
                json.dump(EVENTS, f)
            os.replace(path + ".tmp", path)


def install() -> None:
    try:
        from pysyncobj import syncobj
        from pysyncobj.transport import TCPTransport

        from replication import journal, replica, transport
    except Exception:  # noqa: BLE001 - not a node process
        return

    orig_propose = replica.Replica.propose

    async def propose(self, cmd, **kw):  # type: ignore[no-untyped-def]
        traced = cmd.get("op") == "queue.publish"
        if traced:
            rec("propose")
        try:
            return await orig_propose(self, cmd, **kw)
        finally:
            if traced:
                rec("propose_done")

    replica.Replica.propose = propose

    orig_submit = replica.Replica._submit

    def submit(self, blob, callback):  # type: ignore[no-untyped-def]
        rec("submit")
        orig_submit(self, blob, callback)

    replica.Replica._submit = submit

    orig_check = syncobj.SyncObj._checkCommandsToApply

    def check(self):  # type: ignore[no-untyped-def]
        rec("raft_tick_check")
        orig_check(self)

    syncobj.SyncObj._checkCommandsToApply = check

    orig_sync = journal.DurableJournal.sync

    def sync(self):  # type: ignore[no-untyped-def]
        dirty = self.dirty
        if dirty:
            rec("fsync_start")
        orig_sync(self)
        if dirty:
            rec("fsync_end")

    journal.DurableJournal.sync = sync

    orig_tsend = TCPTransport.send

    def tsend(self, node, message):  # type: ignore[no-untyped-def]
        if isinstance(message, dict):
            kind = message.get("type")
            if kind == "append_entries" and message.get("entries"):
                rec("ae_sent", message["entries"][-1][1])
            elif kind == "next_node_idx":
                rec("ack_sent", message["next_node_idx"])
        return orig_tsend(self, node, message)

    TCPTransport.send = tsend

    orig_rx = transport.DurableTransport._onMessageReceived

    def rx(self, node, message):  # type: ignore[no-untyped-def]
        if isinstance(message, dict):
            kind = message.get("type")
            if kind == "append_entries" and message.get("entries"):
                rec("ae_rx", message["entries"][-1][1])
            elif kind == "next_node_idx":
                rec("ack_rx", message["next_node_idx"])
        return orig_rx(self, node, message)

    transport.DurableTransport._onMessageReceived = rx

    orig_apply = replica.ApplyCore.apply_blob

    def apply_blob(self, blob):  # type: ignore[no-untyped-def]
        rec("apply")
        return orig_apply(self, blob)

    replica.ApplyCore.apply_blob = apply_blob

    from replication import proposer

    orig_drain = proposer.Proposer._drain_done

    def drain(self):  # type: ignore[no-untyped-def]
        rec("drain")
        orig_drain(self)

    proposer.Proposer._drain_done = drain
    from aiohttp import web_protocol

    orig_data = web_protocol.RequestHandler.data_received

    def data_received(self, data):  # type: ignore[no-untyped-def]
        if b"/messages" in data[:200] and data.startswith(b"POST"):
            rec("http_rx")
        return orig_data(self, data)

    web_protocol.RequestHandler.data_received = data_received

    import asyncio.selector_events as se

    orig_write = se._SelectorSocketTransport.write

    def write(self, data):  # type: ignore[no-untyped-def]
        if bytes(data[:12]).startswith(b"HTTP/1.1 20"):
            rec("http_tx")
        return orig_write(self, data)

    se._SelectorSocketTransport.write = write
    threading.Thread(target=dump_forever, daemon=True).start()


if DIR:
    install()
    if os.environ.get("RAFTMQ_TRACE_SWITCH_S"):  # experiment: GIL switch interval
        import sys

        sys.setswitchinterval(float(os.environ["RAFTMQ_TRACE_SWITCH_S"]))
