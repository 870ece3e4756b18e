"""Reads with no `consistency=` see every acknowledged write from any node, never stale data
from a node cut off from the majority; `consistency=local` is the explicit fast opt-in."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.support.cluster import Cluster, http, wait_until

READERS = 60


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not on {url}/metrics")


def test_a_default_read_on_any_node_sees_a_write_acknowledged_by_another(
        cluster: Cluster) -> None:
    urls = [n.url for n in cluster.nodes]
    assert http("PUT", f"{urls[0]}/v1/topics/seen", {"partitions": 1}).status == 201
    assert http("PUT", f"{urls[0]}/v1/queues/seen", {}).status == 201
    for i in range(30):
        writer, reader = urls[i % 3], urls[(i + 1) % 3]
        r = http("POST", f"{writer}/v1/topics/seen/messages", {"messages": [{"body": str(i)}]})
        assert r.status == 201, r.body
        read = http("GET", f"{reader}/v1/topics/seen/partitions/0/messages?offset={i}").body
        assert [m["body"] for m in read["messages"]] == [str(i)], (i, read)
        assert http("POST", f"{writer}/v1/queues/seen/messages",
                    {"messages": [{"body": "m"}]}).status == 201
        info = http("GET", f"{reader}/v1/queues/seen").body
        assert info["stats"]["ready"] == i + 1, (i, info)


def test_a_node_cut_off_from_the_majority_refuses_a_default_read_but_answers_local(
        cluster: Cluster) -> None:
    survivor = cluster.nodes[0]
    assert http("PUT", f"{survivor.url}/v1/queues/cut", {}).status == 201
    assert http("POST", f"{survivor.url}/v1/queues/cut/messages",
                {"messages": [{"body": "m"}]}).status == 201
    wait_until(lambda: http("GET", f"{survivor.url}/v1/queues/cut?consistency=local"
                            ).body["stats"]["ready"] == 1, what="the write applied locally")
    for node in cluster.nodes[1:]:
        cluster.kill(node)
    stale = http("GET", f"{survivor.url}/v1/queues/cut", timeout_s=60)
    assert stale.status in (503, 504), stale.body
    assert stale.body["error"]["retryable"] is True
    local = http("GET", f"{survivor.url}/v1/queues/cut?consistency=local")
    assert local.status == 200 and local.body["stats"]["ready"] == 1


def test_concurrent_default_reads_share_their_log_entries(shared_cluster: Cluster) -> None:
    follower = shared_cluster.nodes.index(shared_cluster.followers()[0])
    url = shared_cluster.nodes[follower].url
    assert http("PUT", f"{url}/v1/queues/many-readers", {}).status in (200, 201)
    reads_before = metric(url, "raftmq_reads_linearizable_total")
    no_ops_before = metric(url, "raftmq_read_barriers_total")

    def read(_: int) -> int:
        with urllib.request.urlopen(f"{url}/v1/queues/many-readers", timeout=30) as resp:
            assert json.loads(resp.read())["name"] == "many-readers"
            return int(resp.status)

    with ThreadPoolExecutor(READERS) as pool:
        assert set(pool.map(read, range(READERS))) == {200}
    assert metric(url, "raftmq_reads_linearizable_total") - reads_before == READERS
    no_ops = metric(url, "raftmq_read_barriers_total") - no_ops_before
    assert 1 <= no_ops < READERS // 2, f"{READERS} concurrent reads proposed {no_ops} no-ops"
