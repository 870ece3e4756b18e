"""Queue features end to end on a real 3-node cluster (issue: queues, complete)."""

from __future__ import annotations

import http.client as httpclient
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.cluster import Cluster, http, wait_until


def make(url: str, queue: str, **config: Any) -> None:
    r = http("PUT", f"{url}/v1/queues/{queue}", config)
    assert r.status == 201, r.body


def pub(url: str, queue: str, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    r = http("POST", f"{url}/v1/queues/{queue}/messages", {"messages": list(messages)})
    assert r.status == 201, r.body
    result: list[dict[str, Any]] = r.body["messages"]
    return result


def recv(url: str, queue: str, **body: Any) -> list[dict[str, Any]]:
    r = http("POST", f"{url}/v1/queues/{queue}/receive", body)
    assert r.status == 200, r.body
    result: list[dict[str, Any]] = r.body["messages"]
    return result


def ack(url: str, queue: str, msgs: list[dict[str, Any]]) -> None:
    r = http("POST", f"{url}/v1/queues/{queue}/ack", {"receipts": [m["receipt"] for m in msgs]})
    assert r.status == 200 and r.body["acked"] == len(msgs), r.body


def test_priorities_and_groups(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[0].url
    make(url, "prio")
    pub(url, "prio", {"body": "low"}, {"body": "high", "priority": 9}, {"body": "mid",
                                                                         "priority": 5})
    assert [m["body"] for m in recv(url, "prio", max_messages=3)] == ["high", "mid", "low"]
    make(url, "grouped")
    pub(url, "grouped", {"body": "a1", "group": "a"}, {"body": "a2", "group": "a"},
        {"body": "b1", "group": "b"})
    first = recv(url, "grouped", max_messages=10)
    assert sorted(m["body"] for m in first) == ["a1", "b1"], "one of a group in flight at a time"
    ack(url, "grouped", [m for m in first if m["body"] == "a1"])
    assert [m["body"] for m in recv(url, "grouped", max_messages=10)] == ["a2"]


def test_delay_dead_letters_and_redrive(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[1].url
    make(url, "delayed")
    pub(url, "delayed", {"body": "later", "delay_s": 1})
    assert recv(url, "delayed") == []
    got = wait_until(lambda: recv(url, "delayed"), timeout_s=10, what="the delayed message")
    assert got[0]["body"] == "later"

    make(url, "jobs", max_receives=1, dead_letter_queue="jobs-dlq", visibility_timeout_s=1)
    pub(url, "jobs", {"body": "poison"})
    assert len(recv(url, "jobs")) == 1  # not acked: the lease expires, then it is dead-lettered
    dead = wait_until(lambda: recv(url, "jobs-dlq"), timeout_s=10, what="a dead letter")
    headers = dead[0]["headers"]
    assert headers["x-dead-letter-reason"] == "max_receives"
    assert headers["x-original-queue"] == "jobs" and headers["x-receive-count"] == "1"
    http("POST", f"{url}/v1/queues/jobs-dlq/nack", {"receipts": [dead[0]["receipt"]]})
    info = http("GET", f"{url}/v1/queues/jobs?consistency=linearizable").body
    assert info["stats"]["dead_lettered_total"] == 1
    r = http("POST", f"{url}/v1/queues/jobs-dlq/redrive", {"to": "jobs", "max_messages": 10})
    assert r.status == 200 and r.body["moved"] == 1, r.body
    assert [m["body"] for m in recv(url, "jobs")] == ["poison"]


def test_dedup_id_answers_the_original(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[2].url
    make(url, "dedup", dedup_window_s=60)
    first = pub(url, "dedup", {"body": "x", "dedup_id": "order-1"})
    again = pub(url, "dedup", {"body": "x", "dedup_id": "order-1"})
    assert again[0]["id"] == first[0]["id"] and again[0]["duplicate"] is True
    info = http("GET", f"{url}/v1/queues/dedup?consistency=linearizable").body
    assert info["stats"]["ready"] == 1


def test_sse_stream_respects_prefetch_and_continues_after_ack(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[0].url
    node = shared_cluster.nodes[0]
    make(url, "streamed")
    pub(url, "streamed", *[{"body": f"s{i}"} for i in range(3)])
    conn = httpclient.HTTPConnection("127.0.0.1", node.http_port, timeout=20)
    conn.request("GET", "/v1/queues/streamed/stream?prefetch=2")
    resp = conn.getresponse()
    assert resp.status == 200
    events = [read_event(resp), read_event(resp)]
    assert [e["body"] for e in events] == ["s0", "s1"]
    info = http("GET", f"{url}/v1/queues/streamed?consistency=linearizable").body
    assert info["stats"]["in_flight"] == 2 and info["stats"]["ready"] == 1, "prefetch is 2"
    ack(url, "streamed", events[:1])
    assert read_event(resp)["body"] == "s2"
    conn.close()


def read_event(resp: httpclient.HTTPResponse) -> dict[str, Any]:
    while True:
        line = resp.readline().decode()
        assert line, "stream ended"
        if line.startswith("data: "):
            event: dict[str, Any] = json.loads(line[6:])
            return event


class Receiver:
    """A real HTTP receiver for webhook push: fails the first `failures` POSTs, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.got: list[dict[str, Any]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(500)
                else:
                    receiver.got.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.server.shutdown()


def test_webhook_push_redelivers_after_receiver_failures(shared_cluster: Cluster,
                                                         receiver: Receiver) -> None:
    url = shared_cluster.nodes[1].url
    make(url, "hooked")
    r = http("PUT", f"{url}/v1/queues/hooked/push", {"url": receiver.url, "max_in_flight": 1})
    assert r.status == 200, r.body
    pub(url, "hooked", {"body": "h1"}, {"body": "h2"})
    wait_until(lambda: len(receiver.got) == 2, timeout_s=30, what="both messages pushed")
    assert [m["body"] for m in receiver.got] == ["h1", "h2"]
    assert receiver.attempts == 4, "two failures, then each message accepted once"
    info = wait_until(lambda: (lambda i: i if i["stats"]["acked_total"] == 2 else None)(
        http("GET", f"{url}/v1/queues/hooked").body), what="acks of pushed messages")
    assert info["stats"]["ready"] == 0 and info["stats"]["in_flight"] == 0
    assert http("DELETE", f"{url}/v1/queues/hooked/push").status == 204


def test_request_reply(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[2].url
    make(url, "rpc")

    def server() -> None:
        msgs = wait_until(lambda: recv(shared_cluster.nodes[0].url, "rpc", wait_s=1),
                          what="the request")
        req = msgs[0]
        pub(shared_cluster.nodes[0].url, req["reply_to"],
            {"body": f"re: {req['body']}", "correlation_id": req["correlation_id"]})
        ack(shared_cluster.nodes[0].url, "rpc", msgs)

    t = threading.Thread(target=server)
    t.start()
    r = http("POST", f"{url}/v1/queues/rpc/request",
             {"message": {"body": "ping"}, "timeout_s": 15})
    t.join(timeout=20)
    assert r.status == 200, r.body
    assert r.body["reply"]["body"] == "re: ping"
    queues = [q["name"] for q in http("GET", f"{url}/v1/queues?consistency=linearizable")
              .body["queues"]]
    assert not [q for q in queues if q.startswith("reply.")], "the reply queue is removed"
    timeout = http("POST", f"{url}/v1/queues/rpc/request",
                   {"message": {"body": "nobody"}, "timeout_s": 1})
    assert timeout.status == 504 and timeout.body["error"]["code"] == "reply_timeout"


def test_restart_keeps_delays_leases_dedup_and_dead_letters(cluster: Cluster) -> None:
    url = cluster.nodes[0].url
    make(url, "survive", dedup_window_s=600, max_receives=1, dead_letter_queue="survive-dlq",
         visibility_timeout_s=600)
    pub(url, "survive", {"body": "leased", "dedup_id": "d1"})
    leased = recv(url, "survive")
    pub(url, "survive", {"body": "delayed", "delay_s": 600})
    make(url, "short", max_receives=1, dead_letter_queue="short-dlq", visibility_timeout_s=1)
    pub(url, "short", {"body": "dead"})
    recv(url, "short")
    wait_until(lambda: http("GET", f"{url}/v1/queues/short-dlq").body["stats"]["ready"] == 1,
               timeout_s=10, what="a dead letter before the restart")
    for node in cluster.nodes:
        cluster.kill(node)
    cluster.start()
    cluster.wait_ready()
    url = cluster.nodes[2].url
    info = http("GET", f"{url}/v1/queues/survive?consistency=linearizable").body
    assert info["stats"]["in_flight"] == 1 and info["stats"]["delayed"] == 1, info
    again = pub(url, "survive", {"body": "leased", "dedup_id": "d1"})
    assert again[0]["duplicate"] is True and again[0]["id"] == leased[0]["id"]
    ack(url, "survive", leased)
    dlq = recv(url, "short-dlq")
    assert [m["body"] for m in dlq] == ["dead"]
    assert dlq[0]["headers"]["x-dead-letter-reason"] == "max_receives"


def test_ttl_overflow_expiry_visibility_and_nack_delay(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[1].url
    make(url, "ttl", message_ttl_s=1, dead_letter_queue="ttl-dlq")
    pub(url, "ttl", {"body": "expires"})
    dead = wait_until(lambda: recv(url, "ttl-dlq"), timeout_s=10, what="the expired message")
    assert dead[0]["headers"]["x-dead-letter-reason"] == "ttl_expired"

    make(url, "capped", max_length=2, overflow="reject")
    pub(url, "capped", {"body": "1"}, {"body": "2"})
    r = http("POST", f"{url}/v1/queues/capped/messages", {"messages": [{"body": "3"}]})
    assert r.status == 429 and r.body["error"]["code"] == "queue_full", r.body
    assert r.headers.get("Retry-After")
    make(url, "rolling", max_length=2, overflow="drop_oldest", dead_letter_queue="rolling-dlq")
    pub(url, "rolling", {"body": "1"}, {"body": "2"})
    pub(url, "rolling", {"body": "3"})  # full: the oldest ready message makes room
    assert [m["body"] for m in recv(url, "rolling", max_messages=5)] == ["2", "3"]
    dropped = recv(url, "rolling-dlq")
    assert dropped[0]["body"] == "1"
    assert dropped[0]["headers"]["x-dead-letter-reason"] == "overflow"

    make(url, "vis", visibility_timeout_s=600)
    pub(url, "vis", {"body": "v"})
    [msg] = recv(url, "vis")
    r = http("POST", f"{url}/v1/queues/vis/visibility",
             {"receipts": [msg["receipt"]], "timeout_s": 0})
    assert r.status == 200 and r.body["updated"][0]["receipt"] == msg["receipt"], r.body
    [again] = recv(url, "vis")
    assert again["id"] == msg["id"] and again["receive_count"] == 2
    r = http("POST", f"{url}/v1/queues/vis/nack", {"receipts": [again["receipt"]], "delay_s": 1})
    assert r.status == 200 and r.body["nacked"] == 1, r.body
    assert recv(url, "vis") == [], "a nack with a delay keeps the message back"
    wait_until(lambda: recv(url, "vis"), timeout_s=10, what="the message after the nack delay")

    make(url, "short-lived", expires_s=1)
    wait_until(lambda: http("GET", f"{url}/v1/queues/short-lived").status == 404, timeout_s=15,
               what="the idle queue to expire")
