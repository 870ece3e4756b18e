"""/metrics after known traffic: queue counters, producers, topic watermarks, Raft role and
the durability counters (the journal really fsyncs)."""

from __future__ import annotations

from tests.support.cluster import Cluster, http, wait_until


def scrape(url: str) -> dict[str, float]:
    out = {}
    for line in http("GET", f"{url}/metrics").body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_after_known_traffic(shared_cluster: Cluster) -> None:
    url = shared_cluster.leader().url
    assert http("PUT", f"{url}/v1/queues/m").status == 201
    http("POST", f"{url}/v1/queues/m/messages", {"messages": [{"body": "x"}] * 3})
    got = http("POST", f"{url}/v1/queues/m/receive", {"max_messages": 2}).body["messages"]
    http("POST", f"{url}/v1/queues/m/nack", {"receipts": [got[0]["receipt"]]})
    http("POST", f"{url}/v1/queues/m/ack", {"receipts": [got[1]["receipt"]]})
    http("POST", f"{url}/v1/producers", {"id": "metrics-p"})
    http("PUT", f"{url}/v1/topics/mt", {"partitions": 2})
    http("POST", f"{url}/v1/topics/mt/messages", {"messages": [{"body": "a", "key": "k"}]})
    m = wait_until(lambda: (lambda s: s if s.get('raftmq_queue_acked_total{queue="m"}') == 1
                            else None)(scrape(url)), what="the leader's metrics")
    assert m['raftmq_queue_published_total{queue="m"}'] == 3
    assert m['raftmq_queue_delivered_total{queue="m"}'] == 2
    assert m['raftmq_queue_nacked_total{queue="m"}'] == 1
    assert m['raftmq_queue_messages{queue="m",state="ready"}'] == 2
    assert m["raftmq_producers"] >= 1
    high = 'raftmq_topic_high_watermark{partition'
    assert sum(v for k, v in m.items() if k.startswith(high) and 'topic="mt"' in k) == 1
    assert m['raftmq_raft_role{role="leader"}'] == 1 and m["raftmq_raft_is_leader"] == 1
    assert m["raftmq_journal_fsyncs_total"] > 0 and m["raftmq_journal_fsync_seconds_total"] > 0
    assert m["raftmq_raft_frames_rejected_total"] == 0
    # the leader's own writes above, one at a time: their commits rode on the next append
    assert m["raftmq_raft_commit_notifies_deferred_total"] >= 1
    assert m["raftmq_raft_commit_notifies_immediate_total"] >= 0
    # node/gc_pauses.py is installed in every node (a small heap: nothing frozen yet)
    assert m["raftmq_gc_freezes_total"] >= 0 and m["raftmq_gc_frozen_objects"] >= 0
    assert "raftmq_gc_full_collection_seconds_count" in m
    # node/heap_trim.py trims once the node is ready (this glibc host has malloc_trim)
    wait_until(lambda: scrape(url)["raftmq_heap_trims_total"] >= 1, what="the start-up trim")
    assert m["raftmq_journal_payload_bytes_in_memory"] <= m["raftmq_journal_payload_bytes"]
