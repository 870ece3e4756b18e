"""The queue part of the HTTP contract on a real 3-node cluster (issue: core)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from tests.support.cluster import Cluster, http, wait_until


def publish(url: str, queue: str, bodies: list[str], **extra: Any) -> Any:
    r = http("POST", f"{url}/v1/queues/{queue}/messages",
             {"messages": [{"body": b} for b in bodies], **extra})
    assert r.status == 201, r.body
    return r.body


def receive(url: str, queue: str, **body: Any) -> list[dict[str, Any]]:
    r = http("POST", f"{url}/v1/queues/{queue}/receive", body)
    assert r.status == 200, r.body
    messages: list[dict[str, Any]] = r.body["messages"]
    return messages


def test_publish_via_follower_receive_via_other_node_in_fifo_order(
        shared_cluster: Cluster) -> None:
    f1, f2 = shared_cluster.followers()[:2]
    r = http("PUT", f"{f1.url}/v1/queues/orders", {"visibility_timeout_s": 30})
    assert r.status == 201, r.body
    assert r.headers["X-Raftmq-Node"] == f1.id
    assert r.headers["X-Raftmq-Leader"] == shared_cluster.leader().id
    bodies = [f"order-{i}" for i in range(50)]
    for chunk in (bodies[:10], bodies[10:11], bodies[11:]):
        publish(f1.url, "orders", chunk)
    got: list[str] = []
    while len(got) < 50:
        batch = receive(f2.url, "orders", max_messages=7)
        assert batch, f"only {len(got)} of 50 received"
        got += [m["body"] for m in batch]
        r = http("POST", f"{f2.url}/v1/queues/orders/ack",
                 {"receipts": [m["receipt"] for m in batch]})
        assert r.status == 200 and r.body["acked"] == len(batch), r.body
    assert got == bodies
    info = http("GET", f"{f1.url}/v1/queues/orders?consistency=linearizable").body
    assert info["stats"]["ready"] == 0 and info["stats"]["in_flight"] == 0
    assert info["stats"]["published_total"] == 50 and info["stats"]["acked_total"] == 50


def test_redelivery_after_visibility_timeout_makes_old_receipt_stale(
        shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/work", {"visibility_timeout_s": 1}).status == 201
    publish(url, "work", ["job"])
    first = receive(url, "work")
    assert len(first) == 1 and first[0]["receive_count"] == 1
    second = wait_until(lambda: receive(shared_cluster.nodes[1].url, "work"), timeout_s=10,
                        what="redelivery after the visibility timeout")
    assert second[0]["id"] == first[0]["id"]
    assert second[0]["receive_count"] == 2
    assert second[0]["receipt"] != first[0]["receipt"]
    stale = http("POST", f"{url}/v1/queues/work/ack", {"receipts": [first[0]["receipt"]]})
    assert stale.status == 200 and stale.body["acked"] == 0
    assert stale.body["stale"] == [first[0]["receipt"]]
    info = http("GET", f"{url}/v1/queues/work?consistency=linearizable").body
    assert info["stats"]["in_flight"] == 1, "the stale ack must not ack the new delivery"
    ok = http("POST", f"{url}/v1/queues/work/ack", {"receipts": [second[0]["receipt"]]})
    assert ok.body["acked"] == 1


def test_long_poll_is_woken_by_a_publish_on_another_node(shared_cluster: Cluster) -> None:
    a, b = shared_cluster.nodes[0], shared_cluster.nodes[2]
    assert http("PUT", f"{a.url}/v1/queues/lp").status == 201
    result: dict[str, Any] = {}

    def poll() -> None:
        start = time.monotonic()
        result["messages"] = receive(a.url, "lp", wait_s=15)
        result["elapsed_s"] = time.monotonic() - start

    t = threading.Thread(target=poll)
    t.start()
    wait_until(lambda: long_polls_waiting(a.url) >= 1, what="the poll waiting on node a")
    publish(b.url, "lp", ["wake up"])
    t.join(timeout=20)
    assert [m["body"] for m in result["messages"]] == ["wake up"]
    assert result["elapsed_s"] < 10, "the poll returned by timeout, not by the publish"


def test_receive_acks_the_previous_batch_even_while_it_long_polls(
        shared_cluster: Cluster) -> None:
    a, b = shared_cluster.nodes[1], shared_cluster.nodes[2]
    assert http("PUT", f"{a.url}/v1/queues/acknext").status == 201
    publish(a.url, "acknext", ["m1", "m2", "m3"])
    first = receive(a.url, "acknext", max_messages=2)
    r = http("POST", f"{a.url}/v1/queues/acknext/receive",
             {"max_messages": 2, "ack_receipts": [m["receipt"] for m in first] + ["1.1"]})
    assert r.status == 200, r.body
    assert [m["body"] for m in r.body["messages"]] == ["m3"]
    assert (r.body["acked"], r.body["stale"]) == (2, ["1.1"])
    last = r.body["messages"]
    result: dict[str, Any] = {}

    def poll() -> None:  # nothing is ready: the ack must not wait for the long poll
        result["answer"] = http("POST", f"{a.url}/v1/queues/acknext/receive",
                                {"wait_s": 15, "ack_receipts": [last[0]["receipt"]]}).body

    t = threading.Thread(target=poll)
    t.start()
    wait_until(lambda: long_polls_waiting(a.url) >= 1, what="the poll waiting on node a")
    stats = http("GET", f"{b.url}/v1/queues/acknext").body["stats"]
    assert (stats["in_flight"], stats["acked_total"]) == (0, 3), stats
    publish(b.url, "acknext", ["m4"])
    t.join(timeout=20)
    answer = result["answer"]
    assert [m["body"] for m in answer["messages"]] == ["m4"]
    assert (answer["acked"], answer["stale"]) == (1, [])
    r = http("POST", f"{a.url}/v1/queues/acknext/receive", {"ack_receipts": "x"})
    assert r.status == 400 and "ack_receipts" in r.body["error"]["message"], r.body


def test_a_publish_answer_says_which_durability_applied(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[0].url
    for name, config, applied in (("dur-fsync", {}, "fsync"),
                                  ("dur-memory", {"durability": "memory"}, "memory")):
        assert http("PUT", f"{url}/v1/queues/{name}", config).status == 201
        body = publish(url, name, ["x"])
        assert body["durability"] == applied, body
    for name, applied in (("dur-topic", "memory"), ("dur-topic-fsync", "fsync")):
        assert http("PUT", f"{url}/v1/topics/{name}", {"durability": applied}).status == 201
        r = http("POST", f"{url}/v1/topics/{name}/messages", {"messages": [{"body": "x"}]})
        assert r.status == 201 and r.body["durability"] == applied, r.body


def long_polls_waiting(url: str) -> int:
    text = http("GET", f"{url}/metrics").body
    for line in text.splitlines():
        if line.startswith("raftmq_long_polls_waiting "):
            return int(float(line.split()[1]))
    raise AssertionError("raftmq_long_polls_waiting missing from /metrics")


def test_bad_input_gets_documented_errors_and_changes_nothing(shared_cluster: Cluster) -> None:
    url = shared_cluster.nodes[1].url
    assert http("PUT", f"{url}/v1/queues/strict").status == 201
    cases = [
        ("PUT", "/v1/queues/bad%20name!", {}, 400, "invalid_request", "queue"),
        ("PUT", "/v1/queues/q2", {"visibility_timeout_s": -1}, 400, "invalid_request",
         "visibility_timeout_s"),
        ("POST", "/v1/queues/strict/messages", {"messages": [{"body": 5}]}, 400,
         "invalid_request", "body"),
        ("POST", "/v1/queues/strict/messages", {"messages": [{"body": "ok"}, {"nobody": 1}]},
         400, "invalid_request", "messages[1]"),
        ("POST", "/v1/queues/strict/messages",
         {"messages": [{"body": "x", "priority": 10}]}, 400, "invalid_request", "priority"),
        ("POST", "/v1/queues/strict/messages",
         {"messages": [{"body": "x" * (1024 * 1024 + 1)}]}, 413, "message_too_large", ""),
        ("POST", "/v1/queues/strict/messages",
         {"messages": [{"body": "x"}] * 1001}, 413, "batch_too_large", ""),
        ("POST", "/v1/queues/strict/receive", {"max_messages": 0}, 400, "invalid_request",
         "max_messages"),
        ("POST", "/v1/queues/strict/receive", {"wait_s": 21}, 400, "invalid_request", "wait_s"),
        ("POST", "/v1/queues/missing/messages", {"messages": [{"body": "x"}]}, 404,
         "queue_not_found", ""),
        ("GET", "/v1/queues/missing", None, 404, "queue_not_found", ""),
        ("GET", "/v1/nothing-here", None, 404, "not_found", ""),
    ]
    for method, path, body, status, code, field in cases:
        r = http(method, f"{url}{path}", body)
        assert r.status == status, (path, r.status, r.body)
        err = r.body["error"]
        assert err["code"] == code, (path, err)
        assert field in err["message"], (path, err)
        assert isinstance(err["retryable"], bool)
    r = http("PUT", f"{url}/v1/queues/strict", {"visibility_timeout_s": 99})
    assert r.status == 409 and r.body["error"]["code"] == "already_exists"
    info = http("GET", f"{url}/v1/queues/strict?consistency=linearizable").body
    assert info["stats"]["published_total"] == 0, "a rejected batch must change nothing"
    assert info["config"]["visibility_timeout_s"] == 30
    queues = http("GET", f"{url}/v1/queues?consistency=linearizable").body["queues"]
    assert "q2" not in [q["name"] for q in queues], "an invalid create must create nothing"


def test_malformed_json_is_a_400(shared_cluster: Cluster) -> None:
    import urllib.request

    url = shared_cluster.nodes[0].url
    req = urllib.request.Request(f"{url}/v1/queues/x", data=b"{not json", method="PUT",
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("expected an error")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        assert b"invalid_request" in exc.read()


def test_answers_are_not_gzipped_by_default_even_when_the_client_accepts_gzip(
        shared_cluster: Cluster) -> None:
    """gzip_answer_bytes_min defaults to 0 (node/config.py): deflating answers on a LAN costs
    the broker CPU (receive b1000: 34 vs 25 us/msg) for clients that ask by reflex. (Before,
    answers of 64 KiB or more were gzip'd; this one is over 100 KiB.)"""
    url = shared_cluster.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/bulky").status == 201
    batch = {"messages": [{"body": "x" * 250} for _ in range(400)]}
    assert http("POST", f"{url}/v1/queues/bulky/messages", batch).status == 201
    req = urllib.request.Request(f"{url}/v1/queues/bulky/receive", method="POST",
                                 data=json.dumps({"max_messages": 400}).encode(),
                                 headers={"Accept-Encoding": "gzip",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers.get("Content-Encoding") is None
        raw = resp.read()
    assert len(raw) > 100_000 and len(json.loads(raw)["messages"]) == 400
