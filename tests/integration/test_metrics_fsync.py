"""The journal fsync latency histogram (issue 8 item 2) after known writes, on every node."""

from __future__ import annotations

import functools
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from node.http_cluster import FSYNC_BUCKETS_S
from tests.support.cluster import Cluster, http, wait_until

WRITES = 10


def fsync_histogram(url: str) -> dict[str, float]:
    """{"count": n, "sum": s, "le=<bound>": cumulative count} of raftmq_journal_fsync_seconds."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "raftmq_journal_fsync_seconds":
            continue
        assert family.type == "histogram"
        for s in family.samples:
            if s.name.endswith("_count"):
                out["count"] = s.value
            elif s.name.endswith("_sum"):
                out["sum"] = s.value
            elif s.name.endswith("_bucket"):
                out[f"le={s.labels['le']}"] = s.value
    return out


def synced_more(url: str, count: float) -> bool:
    return fsync_histogram(url)["count"] > count


def test_every_node_reports_its_journal_fsyncs_in_a_histogram(cluster: Cluster) -> None:
    url = cluster.nodes[0].url
    before = {n.id: fsync_histogram(n.url)["count"] for n in cluster.nodes}
    assert http("PUT", f"{url}/v1/queues/fsync").status == 201
    for i in range(WRITES):  # one at a time: each commit is fsync'd by a majority
        assert http("POST", f"{url}/v1/queues/fsync/messages",
                    {"messages": [{"body": str(i)}]}).status == 201
    leader = cluster.leader()
    hist = fsync_histogram(leader.url)
    assert hist["count"] - before[leader.id] >= WRITES  # the leader syncs every entry
    for node in cluster.nodes:  # followers sync what they ack (through the next tick)
        wait_until(functools.partial(synced_more, node.url, before[node.id]), 10,
                   what=f"{node.id} fsyncs counted")
        h = fsync_histogram(node.url)
        bounds = [f"le={b}" for b in FSYNC_BUCKETS_S] + ["le=+Inf"]
        cumulative = [h[b] for b in bounds]
        assert cumulative == sorted(cumulative) and cumulative[-1] == h["count"], h
        assert h["sum"] > 0, h
