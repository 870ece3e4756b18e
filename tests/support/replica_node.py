"""A node process for replica tests: one Replica plus a tiny msgpack-over-HTTP control API.

Usage: python -m tests.support.replica_node --id n1 --raft 127.0.0.1:P --peers n2=...,n3=...
       --data-dir DIR [--raft-conf JSON]
Prints "READY <control_port>" on stdout once it listens (control on 127.0.0.1, port from the OS).

The state is the real storage BrokerState, wrapped so that
the test can see the order of applied commands (`/log`) and can make apply raise
(op "test.raise": the poison-entry regression).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

from replication import ProposalError, Replica, ReplicaConfig
from storage.answers import encode_default
from storage.state import BrokerState

RECORDED_OPS_SKIPPED = ("tick", "noop")


class RecordingState:
    """Delegates to the broker state; records applied commands; raises on op "test.raise"."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.log: list[list[Any]] = []

    def apply(self, cmd: dict[str, Any], now_ms: int) -> dict[str, Any]:
        op = cmd.get("op")
        if op not in RECORDED_OPS_SKIPPED:
            self.log.append([op, cmd.get("key")])
        if op == "test.raise":
            raise RuntimeError("poison command (test)")
        if op == "test.record":
            return {"recorded": cmd.get("key")}
        result: dict[str, Any] = self.inner.apply(cmd, now_ms)
        return result

    def encode_snapshot(self) -> bytes:
        data: bytes = self.inner.encode_snapshot()
        return data


def _pack(obj: Any) -> web.Response:
    return web.Response(body=msgpack.packb(obj, use_bin_type=True, default=encode_default),
                        content_type="application/msgpack")


async def _read(request: web.Request) -> Any:
    return msgpack.unpackb(await request.read(), raw=False, strict_map_key=False)


async def _timed_propose(replica: Replica, cmd: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        result = await replica.propose(cmd, timeout_s=timeout_s)
        out: dict[str, Any] = {"result": result}
    except ProposalError as exc:
        out = {"error": exc.code, "message": exc.message}
    out["latency_ms"] = (time.perf_counter() - t0) * 1000
    return out


def build_app(replica: Replica) -> web.Application:
    async def propose(request: web.Request) -> web.Response:
        body = await _read(request)
        return _pack(await _timed_propose(replica, body["cmd"], body.get("timeout_s", 10.0)))

    async def propose_many(request: web.Request) -> web.Response:
        body = await _read(request)
        timeout_s = body.get("timeout_s", 10.0)
        outs = await asyncio.gather(*(_timed_propose(replica, c, timeout_s) for c in body["cmds"]))
        return _pack(list(outs))

    async def bench(request: web.Request) -> web.Response:
        body = await _read(request)
        return _pack(await _bench(replica, body["count"], body["in_flight"], body["payload_bytes"]))

    async def status(request: web.Request) -> web.Response:
        st = replica.status()
        return _pack({"node_id": st.node_id, "leader_id": st.leader_id, "term": st.term,
                      "commit_index": st.commit_index, "applied_index": st.applied_index,
                      "role": st.role, "ready": st.ready,
                      "members": [list(m) for m in st.members], "stats": replica.stats()})

    async def applied_log(request: web.Request) -> web.Response:
        return _pack(replica.read(lambda s: list(s.log)))

    async def queue_info(request: web.Request) -> web.Response:
        name = request.query["name"]
        now_ms = time.time_ns() // 1_000_000
        return _pack(replica.read(lambda s: s.inner.queue_info(name, now_ms)))

    async def digest(request: web.Request) -> web.Response:
        snap = replica.read(lambda s: s.inner.encode_snapshot())
        return _pack({"crc32": zlib.crc32(snap), "bytes": len(snap)})

    async def barrier(request: web.Request) -> web.Response:
        try:
            await replica.barrier(timeout_s=5.0)
        except ProposalError as exc:
            return _pack({"error": exc.code})
        return _pack({"log": replica.read(lambda s: list(s.log))})

    listener_calls = [0]

    def on_applied() -> None:
        listener_calls[0] += 1

    replica.add_apply_listener(on_applied)

    async def listener(request: web.Request) -> web.Response:
        return _pack({"calls": listener_calls[0]})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/listener", listener)
    app.router.add_post("/barrier", barrier)
    app.router.add_get("/queue_info", queue_info)
    app.router.add_get("/digest", digest)
    app.router.add_post("/propose", propose)
    app.router.add_post("/propose_many", propose_many)
    app.router.add_post("/bench", bench)
    app.router.add_get("/status", status)
    app.router.add_get("/log", applied_log)
    return app


async def _bench(
    replica: Replica, count: int, in_flight: int, payload_bytes: int
) -> dict[str, Any]:
    """`count` proposals, `in_flight` at a time, from this process; latencies in ms."""
    payload = b"x" * payload_bytes
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            i = next_i
            next_i += 1
            out = await _timed_propose(replica, {"op": "test.record", "key": i, "p": payload}, 10.0)
            if "error" in out:
                errors[out["error"]] = errors.get(out["error"], 0) + 1
            else:
                latencies.append(out["latency_ms"])

    before = replica.stats()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed_s = time.perf_counter() - t0
    after = replica.stats()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else -1.0

    return {"count": count, "in_flight": in_flight, "elapsed_s": elapsed_s,
            "per_s": len(latencies) / elapsed_s, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": errors,
            "entries": after["entries_submitted"] - before["entries_submitted"]}


def _parse_peers(text: str) -> dict[str, str]:
    peers = {}
    for item in filter(None, text.split(",")):
        nid, addr = item.split("=", 1)
        peers[nid] = addr
    return peers


async def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--id", required=True)
    ap.add_argument("--raft", required=True)
    ap.add_argument("--peers", default="")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--raft-conf", default="{}")
    ap.add_argument("--no-leader-grace-s", type=float, default=3.0)
    ap.add_argument("--threading-mode", default="thread", choices=["thread", "loop"])
    ap.add_argument("--no-leader-early-sync", action="store_true")
    args = ap.parse_args(argv)
    inner_cls = BrokerState
    cfg = ReplicaConfig(node_id=args.id, raft_addr=args.raft, peers=_parse_peers(args.peers),
                        data_dir=Path(args.data_dir), secret=b"replica-test-secret",
                        no_leader_grace_s=args.no_leader_grace_s,
                        threading_mode=args.threading_mode,
                        leader_early_sync=not args.no_leader_early_sync,
                        raft_conf=json.loads(args.raft_conf))
    replica = await Replica.start(
        cfg, state_factory=lambda: RecordingState(inner_cls()),
        state_decoder=lambda data: RecordingState(inner_cls.decode_snapshot(data)))
    runner = web.AppRunner(build_app(replica), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await replica.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(main(sys.argv[1:]))
