"""A follower whose Raft thread stalls past its election timeout does not depose the leader.

pysyncobj's tick checks the election timer before it reads the network. A follower stuck in
a slow `fdatasync` (a busy disk: `raftmq bench restart` fills it with snapshot writes) came
back to an expired timer and started an election although the leader's appends were waiting
unread in its socket: the leader stepped down and writes stalled for an election. The stall
guard (replication/replica.py, RaftWatch) reads what already arrived before the timer may
start an election.
"""

from __future__ import annotations

import time
from pathlib import Path

from replication.journal import SLOW_FDATASYNC_ENV
from tests.support.cluster import Cluster, http, running_cluster, wait_until

SLOW_FDATASYNC_MS = 1600  # longer than raftMaxTimeout (1.4 s): every sync outlives the timer
TRAFFIC_S = 6.0


def metric(url: str, name: str) -> float:
    for line in http("GET", f"{url}/metrics").body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from {url}/metrics")


def term(cluster: Cluster) -> int:
    status = cluster.status(cluster.leader())
    assert status is not None
    return int(status["term"])


def test_a_follower_on_a_slow_disk_does_not_start_elections(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.leader()
        slow = cluster.followers()[0]
        cluster.kill(slow)
        cluster.start(slow, env={SLOW_FDATASYNC_ENV: str(SLOW_FDATASYNC_MS)})
        cluster.wait_ready([slow], timeout_s=90)
        before = term(cluster)
        assert http("PUT", f"{leader.url}/v1/queues/slow").status == 201
        deadline = time.monotonic() + TRAFFIC_S
        while time.monotonic() < deadline:  # writes commit through the fast follower
            r = http("POST", f"{leader.url}/v1/queues/slow/messages",
                     {"messages": [{"body": "x"}] * 10})
            assert r.status == 201, r.body
        commit = metric(leader.url, "raftmq_raft_commit_index")
        wait_until(lambda: metric(slow.url, "raftmq_raft_applied_index") >= commit,
                   timeout_s=60, what="the slow follower catching up")
        assert metric(slow.url, "raftmq_raft_elections_started_total") == 0, \
            cluster.log_tail(slow)
        assert cluster.leader().id == leader.id and term(cluster) == before
        assert metric(slow.url, "raftmq_raft_elections_averted_total") >= 1
