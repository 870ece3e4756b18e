"""A tiny fake raftmq node (an HTTP peer, not Raft) for the client's own unit tests.

It keeps queues, topics and producers in memory with the producer rules of API.md
(duplicate -> stored answer with duplicate: true, gap -> out_of_order_sequence, old epoch ->
producer_fenced, unknown id -> producer_unknown; an error consumes no seq), and can be told to
misbehave: drop the connection after applying, answer 503 or 504, answer slowly.
The server runs on its own event loop in a thread; tests stop it by closing that loop.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web


def api_error(status: int, code: str, message: str, retryable: bool = False,
              headers: dict[str, str] | None = None, **details: Any) -> web.Response:
    err = {"code": code, "message": message, "retryable": retryable, **details}
    return web.json_response({"error": err}, status=status, headers=headers)


@dataclass
class FakeProducer:
    epoch: int
    last_seq: int = -1
    results: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Faults:
    """Counters of misbehaviour: each fires on the next N matching requests."""

    drop_after_apply: int = 0      # publishes: apply, then drop the connection unanswered
    timeout_after_apply: int = 0   # publishes: apply, then answer 504 commit_timeout
    unavailable: int = 0           # any request: 503 no_leader with Retry-After, apply nothing
    retry_after_s: str = "0"
    slow_s: float = 0.0            # publishes: wait this long before answering (after applying)
    forget_after_apply: int = 0    # publishes: apply, then forget every producer (expiry)


class FakeNode:
    def __init__(self, name: str = "f1") -> None:
        self.name = name
        self.faults = Faults()
        self.queues: dict[str, list[dict[str, Any]]] = {}
        self.inflight: dict[str, dict[str, Any]] = {}
        self.topics: dict[str, list[dict[str, Any]]] = {}
        self.producers: dict[str, FakeProducer] = {}
        self.seen: list[tuple[str, Any]] = []  # (path, producer ref or None) of every publish
        self.next_id = 1
        self.registrations = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeNode:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop).result(10)
        return self

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application()
        r = app.router
        r.add_post("/v1/producers", self.register)
        r.add_put("/v1/queues/{q}", self.create_queue)
        r.add_get("/v1/queues", self.list_queues)
        r.add_get("/v1/queues/{q}", self.queue_info)
        r.add_delete("/v1/queues/{q}", self.delete_queue)
        r.add_post("/v1/queues/{q}/messages", self.publish)
        r.add_post("/v1/queues/{q}/receive", self.receive)
        r.add_post("/v1/queues/{q}/ack", self.ack)
        r.add_post("/v1/queues/{q}/purge", self.purge)
        r.add_post("/v1/queues/{q}/redrive", self.redrive)
        r.add_put("/v1/topics/{t}", self.create_topic)
        r.add_post("/v1/topics/{t}/messages", self.publish_topic)
        r.add_get("/v1/topics/{t}/partitions/{p}/messages", self.read_topic)
        r.add_post("/v1/transactions", self.transaction)
        r.add_get("/v1/cluster", self.cluster)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- helpers for tests -------------------------------------------------------------------
    def bodies(self, queue: str) -> list[str]:
        return [m["body"] for m in self.queues[queue]]

    def forget_producers(self) -> None:
        self.producers.clear()

    def fence(self, pid: str) -> None:
        self.producers[pid].epoch += 1

    # -- handlers ----------------------------------------------------------------------------
    def _unavailable(self) -> web.Response | None:
        if self.faults.unavailable > 0:
            self.faults.unavailable -= 1
            return api_error(503, "no_leader", "no leader yet", True,
                             headers={"Retry-After": self.faults.retry_after_s})
        return None

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        pid = body.get("id") or f"p-{len(self.producers) + 1}"
        prev = self.producers.get(pid)
        self.producers[pid] = FakeProducer(epoch=(prev.epoch + 1) if prev else 1)
        self.registrations += 1
        return web.json_response({"id": pid, "epoch": self.producers[pid].epoch}, status=201)

    async def create_queue(self, request: web.Request) -> web.Response:
        name = request.match_info["q"]
        created = name not in self.queues
        self.queues.setdefault(name, [])
        return web.json_response({"queue": {"name": name, **(await request.json())}},
                                 status=201 if created else 200)

    async def list_queues(self, request: web.Request) -> web.Response:
        return web.json_response({"queues": [self._info(q) for q in self.queues]})

    def _info(self, name: str) -> dict[str, Any]:
        inflight = sum(1 for m in self.inflight.values() if m["queue"] == name)
        return {"name": name, "config": {"visibility_timeout_s": 30},
                "stats": {"ready": len(self.queues[name]), "in_flight": inflight, "delayed": 0,
                          "published_total": 0, "acked_total": 0, "dead_lettered_total": 0,
                          "oldest_ready_age_s": 0}}

    async def queue_info(self, request: web.Request) -> web.Response:
        name = request.match_info["q"]
        if name not in self.queues:
            return api_error(404, "queue_not_found", f"queue: {name!r} does not exist")
        return web.json_response(self._info(name))

    async def delete_queue(self, request: web.Request) -> web.Response:
        if self.queues.pop(request.match_info["q"], None) is None:
            return api_error(404, "queue_not_found", "queue: does not exist")
        return web.Response(status=204)

    def _check_producer(self, ref: Any) -> web.Response | dict[str, Any] | None:
        """None: apply. A dict: the stored answer (duplicate). A Response: the refusal."""
        if ref is None:
            return None
        p = self.producers.get(ref["id"])
        if p is None or ref["epoch"] > p.epoch:
            return api_error(409, "producer_unknown", "producer.id: unknown; register again")
        if ref["epoch"] < p.epoch:
            return api_error(409, "producer_fenced", f"producer.epoch: fenced by {p.epoch}")
        if ref["seq"] == p.last_seq + 1:
            return None
        if ref["seq"] in p.results:
            return {**copy.deepcopy(p.results[ref["seq"]]), "duplicate": True}
        return api_error(409, "out_of_order_sequence",
                         f"producer.seq: expected {p.last_seq + 1}", expected_seq=p.last_seq + 1)

    async def _answer(self, request: web.Request, result: dict[str, Any]) -> web.Response:
        f = self.faults
        if f.drop_after_apply > 0:
            f.drop_after_apply -= 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if f.timeout_after_apply > 0:
            f.timeout_after_apply -= 1
            return api_error(504, "commit_timeout", "outcome unknown", True)
        if f.slow_s:
            await asyncio.sleep(f.slow_s)
        return web.json_response(result, status=201)

    async def _producer_publish(self, request: web.Request, apply: Any) -> web.Response:
        down = self._unavailable()
        if down is not None:
            return down
        body = await request.json()
        ref = body.get("producer")
        self.seen.append((request.path, ref))
        checked = self._check_producer(ref)
        if isinstance(checked, web.Response):
            return checked
        if checked is not None:
            if self.faults.slow_s:
                await asyncio.sleep(self.faults.slow_s)
            return web.json_response(checked, status=201)
        result = apply(body)
        if isinstance(result, web.Response):
            return result
        if ref is not None:
            p = self.producers[ref["id"]]
            p.last_seq = ref["seq"]
            p.results[ref["seq"]] = result
        if self.faults.forget_after_apply > 0:
            self.faults.forget_after_apply -= 1
            self.forget_producers()
        return await self._answer(request, result)

    async def publish(self, request: web.Request) -> web.Response:
        name = request.match_info["q"]

        def apply(body: dict[str, Any]) -> Any:
            if name not in self.queues:
                return api_error(404, "queue_not_found", f"queue: {name!r} does not exist")
            return {"messages": [{"id": self._enqueue(name, m), "duplicate": False}
                                 for m in body["messages"]], "duplicate": False}

        return await self._producer_publish(request, apply)

    def _enqueue(self, queue: str, msg: dict[str, Any]) -> str:
        mid = str(self.next_id)
        self.next_id += 1
        self.queues[queue].append({"id": mid, "headers": {}, **msg})
        return mid

    async def receive(self, request: web.Request) -> web.Response:
        down = self._unavailable()
        if down is not None:
            return down
        name, body = request.match_info["q"], await request.json()
        if name not in self.queues:
            return api_error(404, "queue_not_found", f"queue: {name!r} does not exist")
        out = []
        while self.queues[name] and len(out) < body.get("max_messages", 1):
            msg = self.queues[name].pop(0)
            receipt = f"r{msg['id']}"
            if body.get("ack") != "auto":
                self.inflight[receipt] = {**msg, "queue": name}
            out.append({**msg, "receipt": receipt, "receive_count": 1, "published_at": 1,
                        "lease_expires_at": 2})
        return web.json_response({"messages": out})

    async def ack(self, request: web.Request) -> web.Response:
        body = await request.json()
        acked = [r for r in body["receipts"] if self.inflight.pop(r, None) is not None]
        return web.json_response({"acked": len(acked),
                                  "stale": [r for r in body["receipts"] if r not in acked]})

    async def purge(self, request: web.Request) -> web.Response:
        name = request.match_info["q"]
        n, self.queues[name] = len(self.queues[name]), []
        return web.json_response({"purged": n})

    async def redrive(self, request: web.Request) -> web.Response:
        name, body = request.match_info["q"], await request.json()
        moved, self.queues[name] = self.queues[name], []
        self.queues.setdefault(body["to"], []).extend(moved)
        return web.json_response({"moved": len(moved)})

    async def create_topic(self, request: web.Request) -> web.Response:
        self.topics.setdefault(request.match_info["t"], [])
        return web.json_response({"topic": {"name": request.match_info["t"]}}, status=201)

    async def publish_topic(self, request: web.Request) -> web.Response:
        log = self.topics[request.match_info["t"]]

        def apply(body: dict[str, Any]) -> Any:
            refs = []
            for m in body["messages"]:
                refs.append({"partition": 0, "offset": len(log), "duplicate": False})
                log.append({"offset": len(log), "key": m.get("key"), "body": m["body"],
                            "headers": m.get("headers", {}), "published_at": 1})
            return {"messages": refs, "duplicate": False}

        return await self._producer_publish(request, apply)

    async def read_topic(self, request: web.Request) -> web.Response:
        log = self.topics[request.match_info["t"]]
        offset, most = int(request.query["offset"]), int(request.query.get("max", "100"))
        msgs = log[offset:offset + most]
        return web.json_response({"messages": msgs, "next_offset": offset + len(msgs),
                                  "high_watermark": len(log), "low_watermark": 0})

    async def transaction(self, request: web.Request) -> web.Response:
        def apply(body: dict[str, Any]) -> Any:
            receipts = [r for a in body.get("ack", []) for r in a["receipts"]]
            if any(r not in self.inflight for r in receipts):
                return api_error(409, "stale_receipt", "ack: a receipt is stale")
            for r in receipts:
                del self.inflight[r]
            ids = [self._enqueue(p["queue"], m) for p in body.get("publish", [])
                   for m in p["messages"]]
            return {"acked": len(receipts), "published": ids, "duplicate": False}

        return await self._producer_publish(request, apply)

    async def cluster(self, request: web.Request) -> web.Response:
        down = self._unavailable()
        if down is not None:
            return down
        return web.json_response({
            "cluster": "fake", "node": self.name, "leader": self.name, "term": 3,
            "commit_index": 10, "applied_index": 10,
            "members": [{"id": self.name, "raft": "127.0.0.1:1", "http": self.url[7:],
                         "role": "leader", "reachable": True}]})


def running_fake() -> Iterator[FakeNode]:
    """For a fixture in each test module: `yield from running_fake()`."""
    node = FakeNode().start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    yield from running_fake()


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def test_fake_node_answers_cluster_status(fake: FakeNode) -> None:
    import urllib.request

    with urllib.request.urlopen(fake.url + "/v1/cluster", timeout=5) as resp:
        assert resp.status == 200
