"""Topics, bindings, consumer groups and live subscribe on a real 3-node cluster."""

from __future__ import annotations

import http.client as httpclient
import json
import threading
import time
from typing import Any

from tests.support.cluster import Cluster, http, wait_until


def put_topic(url: str, name: str, **config: Any) -> None:
    r = http("PUT", f"{url}/v1/topics/{name}", config)
    assert r.status == 201, r.body


def publish(url: str, topic: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = http("POST", f"{url}/v1/topics/{topic}/messages", {"messages": messages})
    assert r.status == 201, r.body
    result: list[dict[str, Any]] = r.body["messages"]
    return result


def read(url: str, topic: str, p: int, **query: Any) -> dict[str, Any]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    r = http("GET", f"{url}/v1/topics/{topic}/partitions/{p}/messages?{qs}")
    assert r.status == 200, r.body
    body: dict[str, Any] = r.body
    return body


def test_same_log_on_every_node_after_concurrent_publishers(cluster: Cluster) -> None:
    put_topic(cluster.nodes[0].url, "events", partitions=3)
    errors: list[Any] = []

    def producer(node_index: int) -> None:
        url = cluster.nodes[node_index].url
        for i in range(20):
            msgs = [{"body": f"p{node_index}-{i}-{j}", "key": f"k{j % 5}"} for j in range(5)]
            r = http("POST", f"{url}/v1/topics/events/messages", {"messages": msgs})
            if r.status != 201:
                errors.append(r.body)

    threads = [threading.Thread(target=producer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    http("GET", f"{cluster.nodes[0].url}/v1/topics/events?consistency=linearizable")

    def logs(url: str) -> list[list[tuple[int, str, str]]]:
        out = []
        for p in range(3):
            msgs = read(url, "events", p, offset=0, max=1000)["messages"]
            out.append([(m["offset"], m["key"], m["body"]) for m in msgs])
        return out

    first = wait_until(lambda: (lambda lg: lg if sum(map(len, lg)) == 300 else None)(
        logs(cluster.nodes[0].url)), what="all 300 messages on node 1")
    for node in cluster.nodes[1:]:
        wait_until(lambda node=node: logs(node.url) == first, what=f"same log on {node.id}")
    for part in first:
        assert [o for o, _, _ in part] == list(range(len(part))), "offsets must be gap-free"
    keys_per_partition = [{k for _, k, _ in part} for part in first]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not keys_per_partition[a] & keys_per_partition[b], "a key in two partitions"


def test_replay_from_offset_and_time_and_long_poll_woken_elsewhere(cluster: Cluster) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    put_topic(a.url, "log")
    publish(a.url, "log", [{"body": f"m{i}"} for i in range(10)])
    got = read(a.url, "log", 0, offset=4, max=3, consistency="linearizable")
    assert [m["body"] for m in got["messages"]] == ["m4", "m5", "m6"]
    assert got["next_offset"] == 7 and got["high_watermark"] == 10
    t_ms = int(time.time() * 1000) + 5
    wait_until(lambda: int(time.time() * 1000) > t_ms, what="clock past t")
    publish(a.url, "log", [{"body": "later"}])
    since = read(a.url, "log", 0, from_time=t_ms, consistency="linearizable")
    assert [m["body"] for m in since["messages"]] == ["later"]

    result: dict[str, Any] = {}

    def poll() -> None:
        start = time.monotonic()
        result["body"] = read(b.url, "log", 0, offset=11, wait_s=15)
        result["elapsed_s"] = time.monotonic() - start

    t = threading.Thread(target=poll)
    t.start()
    wait_until(lambda: long_polls(b.url) >= 1, what="the partition read waiting on node b")
    publish(cluster.nodes[2].url, "log", [{"body": "wake"}])
    t.join(timeout=20)
    assert [m["body"] for m in result["body"]["messages"]] == ["wake"]
    assert result["elapsed_s"] < 10


def long_polls(url: str) -> int:
    for line in http("GET", f"{url}/metrics").body.splitlines():
        if line.startswith("raftmq_long_polls_waiting "):
            return int(float(line.split()[1]))
    return 0


def test_fan_out_to_bound_queues_with_wildcards_and_headers(cluster: Cluster) -> None:
    url = cluster.nodes[1].url
    for q in ("all-orders", "eu-orders", "created-only"):
        assert http("PUT", f"{url}/v1/queues/{q}").status == 201
    bind = [("all-orders", {"topic": "orders.#"}),
            ("eu-orders", {"topic": "orders.*", "headers": {"region": "eu"}, "match": "all"}),
            ("created-only", {"topic": "orders.created"})]
    for q, body in bind:
        r = http("POST", f"{url}/v1/queues/{q}/bindings", body)
        assert r.status == 201, r.body
    put_topic(url, "orders.created")  # created after the bindings: they still match
    put_topic(url, "orders.shipped")
    publish(url, "orders.created", [{"body": "c-eu", "headers": {"region": "eu"}},
                                    {"body": "c-us", "headers": {"region": "us"}}])
    publish(url, "orders.shipped", [{"body": "s-eu", "headers": {"region": "eu"}}])

    def bodies(q: str) -> list[str]:
        r = http("POST", f"{url}/v1/queues/{q}/receive", {"max_messages": 10, "ack": "auto"})
        return sorted(m["body"] for m in r.body["messages"])

    assert bodies("all-orders") == ["c-eu", "c-us", "s-eu"]
    assert bodies("eu-orders") == ["c-eu", "s-eu"]
    assert bodies("created-only") == ["c-eu", "c-us"]
    listed = http("GET", f"{url}/v1/queues/eu-orders/bindings").body["bindings"]
    assert len(listed) == 1 and listed[0]["topic"] == "orders.*"
    r = http("DELETE", f"{url}/v1/queues/eu-orders/bindings/{listed[0]['id']}")
    assert r.status == 204
    publish(url, "orders.created", [{"body": "after", "headers": {"region": "eu"}}])
    assert bodies("eu-orders") == []


def test_group_offsets_and_lag(cluster: Cluster) -> None:
    url = cluster.nodes[2].url
    put_topic(url, "metrics", partitions=2)
    publish(url, "metrics", [{"body": str(i), "key": "a"} for i in range(6)])
    info = http("GET", f"{url}/v1/topics/metrics?consistency=linearizable").body
    p = next(x["partition"] for x in info["partitions"] if x["high_watermark"] == 6)
    r = http("POST", f"{url}/v1/topics/metrics/groups/g1/offsets",
             {"offsets": [{"partition": p, "offset": 4}]})
    assert r.status == 200, r.body
    got = http("GET", f"{url}/v1/topics/metrics/groups/g1/offsets?consistency=linearizable").body
    row = next(x for x in got["partitions"] if x["partition"] == p)
    assert row["committed"] == 4 and row["high_watermark"] == 6 and row["lag"] == 2
    text = http("GET", f"{url}/metrics").body
    assert f'raftmq_topic_group_lag{{group="g1",partition="{p}",topic="metrics"}} 2.0' in text


def test_live_subscribe_streams_new_messages_from_any_node(cluster: Cluster) -> None:
    a, b = cluster.nodes[0], cluster.nodes[2]
    put_topic(a.url, "chat.room1")
    publish(a.url, "chat.room1", [{"body": "before"}])
    conn = httpclient.HTTPConnection("127.0.0.1", a.http_port, timeout=20)
    conn.request("GET", "/v1/subscribe?topics=chat.*")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    publish(b.url, "chat.room1", [{"body": "hello", "key": "u1"}])
    event = read_sse_event(resp)
    conn.close()
    assert event["topic"] == "chat.room1" and event["body"] == "hello"
    assert event["offset"] == 1 and event["partition"] == 0 and event["key"] == "u1"


def read_sse_event(resp: httpclient.HTTPResponse) -> dict[str, Any]:
    while True:
        line = resp.readline().decode()
        assert line, "stream ended"
        if line.startswith("data: "):
            parsed: dict[str, Any] = json.loads(line[len("data: "):])
            return parsed


def test_linearizable_read_on_a_node_cut_off_from_the_majority_never_answers_stale(
        cluster: Cluster) -> None:
    leader = cluster.leader()
    put_topic(leader.url, "lin")
    publish(leader.url, "lin", [{"body": "v1"}])
    others = [n for n in cluster.nodes if n is not leader]
    for n in others:
        cluster.pause(n)
    try:
        r = http("GET", f"{leader.url}/v1/topics/lin/partitions/0/messages"
                 "?offset=0&consistency=linearizable", timeout_s=30)
        assert r.status in (503, 504), f"a cut-off node answered a linearizable read: {r.body}"
        assert r.body["error"]["retryable"] is True
    finally:
        for n in others:
            cluster.resume(n)


def test_whole_cluster_restart_keeps_topics_offsets_bindings_and_groups(cluster: Cluster) -> None:
    url = cluster.nodes[0].url
    put_topic(url, "keep.t", partitions=2, retention={"max_messages": 100})
    assert http("PUT", f"{url}/v1/queues/keep-q").status == 201
    assert http("POST", f"{url}/v1/queues/keep-q/bindings", {"topic": "keep.#"}).status == 201
    placed = publish(url, "keep.t", [{"body": f"b{i}", "key": f"k{i}"} for i in range(8)])
    http("POST", f"{url}/v1/topics/keep.t/groups/g/offsets",
         {"offsets": [{"partition": 0, "offset": 1}, {"partition": 1, "offset": 1}]})
    for node in cluster.nodes:
        cluster.kill(node)
    cluster.start()
    cluster.wait_ready()
    url = cluster.nodes[1].url
    info = http("GET", f"{url}/v1/topics/keep.t?consistency=linearizable").body
    assert info["config"]["retention"]["max_messages"] == 100
    assert sum(p["high_watermark"] for p in info["partitions"]) == 8
    for m in placed:
        got = read(url, "keep.t", m["partition"], offset=m["offset"], max=1)
        assert got["messages"][0]["offset"] == m["offset"]
    groups = http("GET", f"{url}/v1/topics/keep.t/groups/g/offsets").body["partitions"]
    assert [g["committed"] for g in groups] == [1, 1]
    assert len(http("GET", f"{url}/v1/queues/keep-q/bindings").body["bindings"]) == 1
    publish(url, "keep.t", [{"body": "after-restart"}])
    r = http("POST", f"{url}/v1/queues/keep-q/receive", {"max_messages": 100, "ack": "auto"})
    assert len(r.body["messages"]) == 9
