"""research/pysyncobj.md §5.3: a restarted ex-leader with a conflicting tail must catch up.

The ex-leader L appends entries its followers never get (they are SIGSTOPped), is killed, and
the others go on under a new leader until its log is many 64 KiB messages longer. When L comes
back, the leader's first message finds L's conflicting tail ("go back to X"), the later ones of
the same round find nothing at their prevLogIdx ("my end is X+1"); the leader applies replies
in order and ends at X+1 every round, forever, in stock pysyncobj. DurableTransport keeps the
backtrack point until a success (transport.py `_backtrack_floor`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.cluster import wait_until
from tests.support.durability_cluster import DCluster, DNode, wait_acks, wait_or_describe

pytestmark = pytest.mark.integration

PAYLOAD = "4000"


def catch_up(cluster: DCluster, env: dict[str, str] | None = None) -> tuple[DNode, DNode]:
    """Build the situation; returns (restarted ex-leader, current leader)."""
    for node in cluster.nodes:
        cluster.start(node, "write", "--window", "20", "--retry", "--payload-bytes", PAYLOAD,
                      env=env)
    wait_acks(cluster.nodes, 300)
    old = wait_until(cluster.leader, what="a leader")
    others = [n for n in cluster.nodes if n is not old]
    for node in others:
        os.kill(node.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    wait_until(lambda: (old.stats() or {}).get("adds", 0) > 0, what="stats")
    adds = old.stats()["adds"]  # type: ignore[index]
    wait_until(lambda: old.stats()["adds"] >= adds + 15,  # type: ignore[index]
               what="the isolated leader to append entries nobody else has")
    cluster.kill(old)
    for node in others:
        os.kill(node.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    new_leader = wait_until(cluster.leader, timeout_s=30, what="a new leader")
    commit = new_leader.stats()["commit"]  # type: ignore[index]
    wait_until(lambda: new_leader.stats()["commit"] > commit + 200,  # type: ignore[index]
               timeout_s=120, what="the new leader to get far ahead (> 10 messages of 64 KiB)")
    cluster.start(old, "idle", env=env)
    return old, new_leader


SCENARIO_ATTEMPTS_MAX = 3


def test_restarted_ex_leader_with_conflicting_tail_catches_up(tmp_path: Path) -> None:
    """Catching up must always work (a stall fails at once). Whether the ex-leader's extra
    entries reached its journal before the kill is timing, so the scenario is built again
    (a fresh cluster) until one attempt really had a conflicting tail to replace."""
    for attempt in range(SCENARIO_ATTEMPTS_MAX):
        cluster = DCluster(tmp_path / f"attempt-{attempt}", 3)
        try:
            old, leader = catch_up(cluster)
            wait_or_describe(lambda old=old, leader=leader: (old.stats() or {}).get("applied", 0)
                             >= leader.stats()["commit"] - 50,  # type: ignore[index]
                             [old, leader], timeout_s=90,
                             what="the restarted ex-leader to catch up")
            stats = old.stats()
            assert stats is not None
            # replaced by a truncation, or by a snapshot install that rewrote the journal
            if stats["truncations_physical"] + stats["rewrites"] >= 1:
                return
        finally:
            cluster.kill_all()
    raise AssertionError(f"no attempt of {SCENARIO_ATTEMPTS_MAX} had a conflicting tail: "
                         "the test did not exercise the catch-up it is about")
