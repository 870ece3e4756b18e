"""Raft entries read back from the journal file, through real nodes (replication/journal.py).

With RAFTMQ_TEST_JOURNAL_RAM_TAIL_BYTES=0 every written payload leaves memory at once, so the
leader sends a restarted follower only entries read back from its file, and that follower
replays its own journal the same way. Nothing may be lost, reordered or duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_metrics import scrape
from tests.support.cluster import Cluster, http, wait_until

pytestmark = pytest.mark.integration

EVICT_ALL = {"RAFTMQ_TEST_JOURNAL_RAM_TAIL_BYTES": "0"}


def ready_count(url: str) -> int:
    r = http("GET", f"{url}/v1/queues/q?consistency=local")
    return int(r.body["stats"]["ready"]) if r.status == 200 else -1


def test_a_follower_catches_up_from_entries_read_back_from_the_file(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        c.start(env=EVICT_ALL)
        c.wait_ready()
        leader = c.leader()
        assert http("PUT", f"{leader.url}/v1/queues/q").status == 201
        follower = c.followers()[0]
        c.kill(follower)
        for i in range(40):
            body = {"messages": [{"body": f"m{i}-{j}"} for j in range(50)]}
            assert http("POST", f"{leader.url}/v1/queues/q/messages", body).status == 201
        c.start(follower, env=EVICT_ALL)
        wait_until(lambda: ready_count(follower.url) == 2000, 60, what="the follower at 2000")
        assert scrape(leader.url)["raftmq_journal_payload_reads_total"] > 0
        got = http("POST", f"{follower.url}/v1/queues/q/receive",
                   {"max_messages": 1000, "ack": "auto"}).body["messages"]
        got += http("POST", f"{follower.url}/v1/queues/q/receive",
                    {"max_messages": 1000, "ack": "auto"}).body["messages"]
        assert [m["body"] for m in got] == [f"m{i}-{j}" for i in range(40) for j in range(50)]
    finally:
        c.stop()
