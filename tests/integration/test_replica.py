"""Replica on a real 3-node cluster of processes (tests/support/replica_node.py), no mocked Raft:
the tests that kill nothing share one cluster (each uses its own keys). Faults, restarts and other
cluster shapes are in test_replica_faults.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.support.replica_cluster import Cluster, wait_logs_equal

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that kill nothing (each uses its own keys)."""
    c = Cluster(tmp_path_factory.mktemp("shared"))
    try:
        c.start()
        c.wait_stable()
        yield c
    finally:
        c.stop()


def test_follower_proposals_are_forwarded_and_applied_everywhere_in_one_order(
        shared: Cluster) -> None:
    leader = shared.leader()
    follower = shared.followers(leader)[0]
    cmds = [{"op": "test.record", "key": f"fwd{i}"} for i in range(40)]
    outs = follower.call("POST", "/propose_many", {"cmds": cmds, "timeout_s": 10})
    assert [o.get("error") for o in outs] == [None] * 40
    assert [o["result"]["recorded"] for o in outs] == [c["key"] for c in cmds]
    out = leader.propose({"op": "test.record", "key": "fwd-leader"})
    assert out["result"] == {"recorded": "fwd-leader"}
    keys = [c["key"] for c in cmds] + ["fwd-leader"]
    assert sorted(wait_logs_equal(shared.live(), keys)) == sorted(keys)

def test_group_commit_packs_concurrent_proposals_into_few_entries(shared: Cluster) -> None:
    leader = shared.leader()
    before = leader.status()["stats"]
    cmds = [{"op": "test.record", "key": i, "pad": "x" * 100} for i in range(500)]
    outs = leader.call("POST", "/propose_many", {"cmds": cmds, "timeout_s": 20})
    assert all("result" in o for o in outs), outs[:3]
    assert [o["result"]["recorded"] for o in outs] == list(range(500))  # each its own result
    after = leader.status()["stats"]
    commands = after["commands_submitted"] - before["commands_submitted"]
    entries = after["entries_submitted"] - before["entries_submitted"]
    assert commands >= 500
    # ~130 B per command and 60 KB entries: 500 commands fit in one entry, and the window
    # lets at most 16 go before packing starts; allow for ticks slipping in between.
    assert entries <= 40, f"{commands} commands went in {entries} entries"

def test_poison_command_does_not_wedge_the_cluster(shared: Cluster) -> None:
    leader = shared.leader()
    follower = shared.followers(leader)[0]
    bad = follower.propose({"op": "test.raise", "key": "poison"})
    assert bad["result"]["error"]["code"] == "internal_error"
    for i in range(5):
        node = (leader, follower)[i % 2]
        assert node.propose({"op": "test.record", "key": f"after{i}"})["result"] == {
            "recorded": f"after{i}"}
    keys = ["poison"] + [f"after{i}" for i in range(5)]
    assert wait_logs_equal(shared.live(), keys) == keys  # applied everywhere, in this order

def test_leader_ticks_about_twice_a_second_and_listeners_fire_everywhere(
        shared: Cluster) -> None:
    leader = shared.leader()
    followers = shared.followers(leader)
    before = {n.id: (n.status(), n.call("GET", "/listener")["calls"]) for n in shared.live()}
    t0 = time.monotonic()
    time.sleep(3.0)  # a measurement window without traffic, not synchronisation
    elapsed_s = time.monotonic() - t0
    ticks = (leader.status()["stats"]["entries_submitted"]
             - before[leader.id][0]["stats"]["entries_submitted"])
    assert 0.5 * elapsed_s <= ticks <= 3 * elapsed_s, f"{ticks} ticks in {elapsed_s:.1f}s"
    for f in followers:
        st = f.status()
        assert st["stats"]["entries_submitted"] == before[f.id][0]["stats"]["entries_submitted"]
        assert st["applied_index"] >= before[f.id][0]["applied_index"] + ticks - 1
        # Apply listeners ran on every node's loop (coalesced: at least once, at most per entry).
        calls = f.call("GET", "/listener")["calls"] - before[f.id][1]
        assert 1 <= calls <= ticks + 1

def test_a_command_larger_than_an_entry_goes_alone_and_replicates(shared: Cluster) -> None:
    leader = shared.leader()
    follower = shared.followers(leader)[0]
    before = follower.status()["stats"]["entries_submitted"]
    big = {"op": "test.record", "key": "big", "pad": os.urandom(1_000_000)}
    small = [{"op": "test.record", "key": f"s{i}"} for i in range(5)]
    outs = follower.call("POST", "/propose_many", {"cmds": [*small, big], "timeout_s": 20})
    assert [o["result"]["recorded"] for o in outs] == [*(c["key"] for c in small), "big"]
    assert follower.status()["stats"]["entries_submitted"] - before == 2  # small ones, big one
    keys = [*(c["key"] for c in small), "big"]
    assert wait_logs_equal(shared.live(), keys) == keys

def test_barrier_on_a_follower_sees_every_earlier_write(shared: Cluster) -> None:
    leader = shared.leader()
    for f in shared.followers(leader):
        for i in range(3):
            key = f"{f.id}-{i}"
            assert "result" in leader.propose({"op": "test.record", "key": key})
            # Right after the barrier returns (no polling), the follower has applied the write.
            out = f.call("POST", "/barrier")
            assert ["test.record", key] in out["log"]

def test_commit_notifications_wait_for_the_next_append_unless_a_follower_waits(
        shared: Cluster) -> None:
    """CommitNotifyDeferral on real nodes: the leader's own one-at-a-time writes let the commit
    index ride on the next append_entries; a follower's forwarded write is told at once."""
    leader = shared.leader()
    follower = shared.followers(leader)[0]
    before = leader.status()["stats"]
    for i in range(20):  # one at a time, as `raftmq bench latency` writes
        assert leader.propose({"op": "test.record", "key": f"cn-l{i}"})["result"]
    mid = leader.status()["stats"]
    assert mid["commit_notifies_deferred"] - before["commit_notifies_deferred"] >= 10
    for i in range(20):
        assert follower.propose({"op": "test.record", "key": f"cn-f{i}"})["result"]
    after = leader.status()["stats"]
    # Every forwarded write's commit went out at once (a tick may carry more than one).
    assert after["commit_notifies_immediate"] - mid["commit_notifies_immediate"] >= 10
    keys = [f"cn-l{i}" for i in range(20)] + [f"cn-f{i}" for i in range(20)]
    assert wait_logs_equal(shared.live(), keys) == keys  # and every node applied every write
