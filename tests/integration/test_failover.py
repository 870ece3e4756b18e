"""Crashes: nothing acknowledged is lost, writes resume (issue: core, "done means")."""

from __future__ import annotations

import threading
import urllib.error
from typing import Any

from tests.support.cluster import Cluster, http, wait_until


class Publisher(threading.Thread):
    """Publishes numbered messages one request at a time to every node in turn, recording
    which ones were acknowledged (201). Unknown outcomes (timeouts, 5xx) are not acked."""

    def __init__(self, cluster: Cluster, queue: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.queue = cluster, queue
        self.acked: list[str] = []
        self.attempted = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            node = self.cluster.nodes[i % len(self.cluster.nodes)]
            i += 1
            if not node.alive:
                continue
            body = f"m{self.attempted}"
            self.attempted += 1
            try:
                r = http("POST", f"{node.url}/v1/queues/{self.queue}/messages",
                         {"messages": [{"body": body}]}, timeout_s=15)
            except (urllib.error.URLError, OSError, TimeoutError):
                continue
            if r.status == 201:
                self.acked.append(body)


def drain(url: str, queue: str) -> list[str]:
    got: list[str] = []
    while True:
        r = http("POST", f"{url}/v1/queues/{queue}/receive",
                 {"max_messages": 500, "ack": "auto"}, timeout_s=30)
        assert r.status == 200, r.body
        if not r.body["messages"]:
            return got
        got += [m["body"] for m in r.body["messages"]]


def acked_count_reaches(pub: Publisher, n: int) -> bool:
    return len(pub.acked) >= n


def test_kill_leader_during_publishes_loses_nothing_and_writes_resume(cluster: Cluster) -> None:
    url = cluster.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/stream").status == 201
    pub = Publisher(cluster, "stream")
    pub.start()
    try:
        wait_until(lambda: acked_count_reaches(pub, 30), what="30 acked publishes")
        old_leader = cluster.leader()
        cluster.kill(old_leader)
        before = len(pub.acked)
        wait_until(lambda: acked_count_reaches(pub, before + 30), timeout_s=60,
                   what="writes resuming after the leader was killed")
        new_leader = cluster.leader()
        assert new_leader is not old_leader
    finally:
        pub.stop_event.set()
        pub.join(timeout=30)
    cluster.start(old_leader)
    cluster.wait_ready()
    got = drain(cluster.leader().url, "stream")
    missing = set(pub.acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:10]}"
    assert len(got) == len(set(got)), "a message was delivered twice by one drain"


def test_kill_all_nodes_then_restart_keeps_every_acked_message(cluster: Cluster) -> None:
    url = cluster.nodes[1].url
    assert http("PUT", f"{url}/v1/queues/keep").status == 201
    acked: list[str] = []
    for i in range(20):
        bodies = [f"k{i}-{j}" for j in range(25)]
        r = http("POST", f"{cluster.nodes[i % 3].url}/v1/queues/keep/messages",
                 {"messages": [{"body": b} for b in bodies]})
        assert r.status == 201, r.body
        acked += bodies
    in_flight = http("POST", f"{url}/v1/queues/keep/receive",
                     {"max_messages": 5, "visibility_timeout_s": 600}).body["messages"]
    assert len(in_flight) == 5
    for node in cluster.nodes:
        cluster.kill(node)
    cluster.start()
    cluster.wait_ready()
    info: dict[str, Any] = http(
        "GET", f"{cluster.nodes[2].url}/v1/queues/keep?consistency=linearizable").body
    assert info["stats"]["ready"] == 495 and info["stats"]["in_flight"] == 5, info
    got = drain(cluster.nodes[0].url, "keep")
    assert sorted(got + [m["body"] for m in in_flight]) == sorted(acked)
    r = http("POST", f"{url}/v1/queues/keep/ack", {"receipts": [m["receipt"] for m in in_flight]})
    assert r.body["acked"] == 5, "leases must survive a whole-cluster restart"
