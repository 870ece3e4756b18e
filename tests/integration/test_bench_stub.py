"""`raftmq bench` client loops against a tiny in-memory HTTP stub of the API (no cluster).

The stub keeps real queue/topic state, so the tests check what a user of the tool relies on:
every workload moves the messages it says it moved, drains what it pre-filled, speaks msgpack
when the server does and JSON when it does not, and reports the documented JSON fields.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from aiohttp import web

from raftmq import bench

MSGPACK = "application/msgpack"


class StubBroker:
    """Queues and topics in memory, enough of API.md for the bench's requests."""

    def __init__(self, msgpack_ok: bool) -> None:
        self.msgpack_ok = msgpack_ok
        self.queues: dict[str, deque[dict[str, Any]]] = {}
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.topics: dict[str, list[dict[str, Any]]] = {}
        self.published = self.acked = self.next_id = 0
        self.acks_in_receive = 0  # acks that came as a receive's ack_receipts
        self.content_types: set[str] = set()
        self.refuse_next = 0  # answer this many publishes 503 `unavailable` (not applied)
        self.read_levels: set[str | None] = set()  # consistency= of the topic reads seen

    async def body(self, request: web.Request) -> Any:
        raw = await request.read()
        self.content_types.add(request.content_type)
        if not raw:
            return {}
        if request.content_type == MSGPACK:
            assert self.msgpack_ok, "client sent msgpack to a JSON-only server"
            return msgpack.unpackb(raw, raw=False)
        return json.loads(raw)

    def answer(self, request: web.Request, data: Any, status: int = 200) -> web.Response:
        if self.msgpack_ok and MSGPACK in request.headers.get("Accept", ""):
            return web.Response(body=msgpack.packb(data, use_bin_type=True), status=status,
                                content_type=MSGPACK)
        return web.json_response(data, status=status)

    async def put_queue(self, request: web.Request) -> web.Response:
        await self.body(request)
        self.queues.setdefault(request.match_info["q"], deque())
        return self.answer(request, {"queue": {"name": request.match_info["q"]}}, 201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        self.queues.pop(request.match_info["q"], None)
        return web.Response(status=204)

    async def list_queues(self, request: web.Request) -> web.Response:
        return self.answer(request, {"queues": []})

    async def publish(self, request: web.Request) -> web.Response:
        msgs = (await self.body(request))["messages"]
        if self.refuse_next > 0:
            self.refuse_next -= 1
            error = {"code": "unavailable", "message": "busy", "retryable": True}
            return self.answer(request, {"error": error}, 503)
        queue = self.queues[request.match_info["q"]]
        ids = []
        for m in msgs:
            self.next_id += 1
            queue.append({"id": str(self.next_id), "body": m["body"],
                          "published_at": int(time.time() * 1000)})
            ids.append({"id": str(self.next_id), "duplicate": False})
        self.published += len(msgs)
        return self.answer(request, {"messages": ids, "duplicate": False}, 201)

    async def receive(self, request: web.Request) -> web.Response:
        req = await self.body(request)
        queue = self.queues[request.match_info["q"]]
        acks = req.get("ack_receipts") or []
        acked = [r for r in acks if self.in_flight.pop(r, None) is not None]
        self.acked += len(acked)
        self.acks_in_receive += len(acked)
        out = []
        while queue and len(out) < req.get("max_messages", 1):
            m = dict(queue.popleft(), receipt=f"r{m_id()}")
            self.in_flight[m["receipt"]] = m
            out.append(m)
        if not out and req.get("wait_s"):
            await asyncio.sleep(0.01)
        answer: dict[str, Any] = {"messages": out}
        if acks:
            answer.update(acked=len(acked), stale=[])
        return self.answer(request, answer)

    async def ack(self, request: web.Request) -> web.Response:
        receipts = (await self.body(request))["receipts"]
        acked = [r for r in receipts if self.in_flight.pop(r, None) is not None]
        self.acked += len(acked)
        return self.answer(request, {"acked": len(acked), "stale": []})

    async def put_topic(self, request: web.Request) -> web.Response:
        await self.body(request)
        self.topics.setdefault(request.match_info["t"], [])
        return self.answer(request, {"topic": {"name": request.match_info["t"]}}, 201)

    async def delete_topic(self, request: web.Request) -> web.Response:
        self.topics.pop(request.match_info["t"], None)
        return web.Response(status=204)

    async def topic_publish(self, request: web.Request) -> web.Response:
        log = self.topics[request.match_info["t"]]
        out = []
        for m in (await self.body(request))["messages"]:
            log.append({"offset": len(log), "body": m["body"], "key": None, "headers": {}})
            out.append({"partition": 0, "offset": len(log) - 1, "duplicate": False})
        self.published += len(out)
        return self.answer(request, {"messages": out}, 201)

    async def topic_read(self, request: web.Request) -> web.Response:
        log = self.topics[request.match_info["t"]]
        self.read_levels.add(request.query.get("consistency"))
        offset, most = int(request.query["offset"]), int(request.query["max"])
        msgs = log[offset:offset + most]
        return self.answer(request, {"messages": msgs, "next_offset": offset + len(msgs),
                                     "high_watermark": len(log), "low_watermark": 0})

    async def cluster(self, request: web.Request) -> web.Response:
        host = request.host
        return web.json_response({"leader": "n1", "members": [{"id": "n1", "http": host}]})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        q, t = "/v1/queues/{q}", "/v1/topics/{t}"
        app.add_routes([
            web.get("/v1/queues", self.list_queues), web.put(q, self.put_queue),
            web.delete(q, self.delete_queue), web.post(q + "/messages", self.publish),
            web.post(q + "/receive", self.receive), web.post(q + "/ack", self.ack),
            web.put(t, self.put_topic), web.delete(t, self.delete_topic),
            web.post(t + "/messages", self.topic_publish),
            web.get(t + "/partitions/{p}/messages", self.topic_read),
            web.get("/v1/cluster", self.cluster),
        ])
        return app


_receipts = iter(range(10**9))


def m_id() -> int:
    return next(_receipts)


def serve(broker: StubBroker) -> Iterator[str]:
    """Run the stub on 127.0.0.1 (port from the OS) in a thread; yield its URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(broker.app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def stub() -> Iterator[tuple[StubBroker, str]]:
    broker = StubBroker(msgpack_ok=True)
    for url in serve(broker):
        yield broker, url


@pytest.fixture
def json_stub() -> Iterator[tuple[StubBroker, str]]:
    broker = StubBroker(msgpack_ok=False)
    for url in serve(broker):
        yield broker, url


def run_bench(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert bench.main([*argv, "--json", "--quiet"]) == 0
    results: list[dict[str, Any]] = json.loads(capsys.readouterr().out)["results"]
    return results


FIELDS = {"workload", "label", "batch", "concurrency", "size_bytes", "codec", "msgs", "seconds",
          "msgs_per_s", "mb_per_s", "latency_ms", "node_cpu_s_per_msg", "client_cpu_s",
          "errors"}


def test_publish_moves_every_message_and_reports_fields(stub, capsys) -> None:
    broker, url = stub
    [r] = run_bench(capsys, "publish", "--url", url, "-n", "1000", "-b", "10", "-c", "4")
    assert set(r) >= FIELDS
    assert r["msgs"] == 1000 and broker.published == 1000
    assert r["errors"] == {} and r["codec"] == "msgpack"
    assert r["msgs_per_s"] > 0 and r["mb_per_s"] > 0
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    assert r["node_cpu_s_per_msg"] is None  # --url without --pids: unknown, not made up
    assert broker.queues == {}  # the bench deletes what it created


def test_receive_drains_the_prefilled_queue(stub, capsys) -> None:
    broker, url = stub
    [r] = run_bench(capsys, "receive", "--url", url, "-n", "500", "-b", "50", "-c", "3")
    assert r["msgs"] == 500
    assert broker.acked == 500 and broker.in_flight == {}


def test_receive_ack_next_acks_each_batch_in_the_next_receive(stub, capsys) -> None:
    broker, url = stub
    [r] = run_bench(capsys, "receive", "--url", url, "-n", "500", "-b", "50", "-c", "3",
                    "--ack-next")
    assert r["msgs"] == 500 and r["label"] == "receive b50 c3 ack-next"
    assert broker.acked == 500 and broker.in_flight == {}
    assert broker.acks_in_receive >= 500 - 3 * 50  # at most each worker's last batch alone


def test_e2e_consumes_what_producers_published(stub, capsys) -> None:
    broker, url = stub
    [r] = run_bench(capsys, "e2e", "--url", url, "-n", "600", "-b", "20", "-c", "2",
                    "--consumers", "2")
    assert r["msgs"] == 600 == broker.acked
    assert r["e2e_latency_ms"]["p50"] is not None


def test_topic_publish_and_read(stub, capsys) -> None:
    broker, url = stub
    [w] = run_bench(capsys, "topic-publish", "--url", url, "-n", "300", "-b", "30")
    [r] = run_bench(capsys, "topic-read", "--url", url, "-n", "300", "-b", "70", "-c", "2")
    assert w["msgs"] == 300
    assert r["msgs"] == 600  # two readers, each replays the whole partition
    assert broker.published == 600  # 300 measured + 300 pre-filled for the read
    assert broker.read_levels == {None}  # the server's default unless asked


def test_topic_read_can_ask_for_local_reads(stub, capsys) -> None:
    broker, url = stub
    [r] = run_bench(capsys, "topic-read", "--url", url, "-n", "100", "-b", "50",
                    "--consistency", "local")
    assert r["msgs"] >= 100 and broker.read_levels == {"local"}


def test_latency_is_one_message_at_a_time(stub, capsys) -> None:
    _broker, url = stub
    [r] = run_bench(capsys, "latency", "--url", url, "-n", "50")
    assert (r["batch"], r["concurrency"], r["msgs"]) == (1, 1, 50)


def test_json_only_server_gets_json(json_stub, capsys) -> None:
    broker, url = json_stub
    [r] = run_bench(capsys, "publish", "--url", url, "-n", "100", "-b", "10")
    assert r["codec"] == "json" and r["msgs"] == 100
    assert "application/msgpack" not in broker.content_types


def test_duration_mode_stops_on_time(stub, capsys) -> None:
    _broker, url = stub
    [r] = run_bench(capsys, "publish", "--url", url, "--duration", "0.5", "-b", "5")
    assert 0.4 < r["seconds"] < 5 and r["msgs"] > 0


def test_limits_are_enforced_with_a_clear_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["publish", "--batch", "1001", "--url", "http://127.0.0.1:1"])
    assert exc.value.code == 2
    assert "BATCH_MAX" in capsys.readouterr().err


def test_unreachable_server_fails_cleanly(capsys) -> None:
    assert bench.main(["publish", "-n", "10", "--url", "http://127.0.0.1:9", "-q"]) == 1
    assert "raftmq bench:" in capsys.readouterr().err


def test_retryable_answers_are_retried_and_counted(stub, capsys) -> None:
    broker, url = stub
    broker.refuse_next = 3
    [r] = run_bench(capsys, "publish", "--url", url, "-n", "200", "-b", "10", "-c", "2")
    assert r["msgs"] == 200 == broker.published
    assert r["errors"] == {"unavailable": 3}
    assert r["error_messages"] == {"unavailable": "busy"}
