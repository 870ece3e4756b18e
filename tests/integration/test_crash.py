"""kill -9 at every step of a snapshot and of the journal compaction that follows it.

The node runs with RAFTMQ_TEST_CRASH_AT=<step>: when the snapshot child (or the parent) reaches
that step, the whole node is SIGKILLed (replication/journal.py `crash_point`). The child waits
RAFTMQ_TEST_SNAPSHOT_DELAY_MS first, so the parent keeps acknowledging entries that only the
journal holds. After a restart every acknowledged entry must be there. The step
`snapshot.after_dirsync` is research/pysyncobj.md §3.3 (stock pysyncobj lost 120-330 acked
entries per kill there, on every node).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from replication.journal import CRASH_AT_ENV
from replication.snapshots import SNAPSHOT_DELAY_ENV
from tests.support.cluster import wait_until
from tests.support.durability_cluster import DCluster, wait_exit

pytestmark = pytest.mark.integration

STEPS = [
    "snapshot.child_start",
    "snapshot.after_write",
    "snapshot.after_fsync",
    "snapshot.after_rename",
    "snapshot.after_dirsync",
    "journal.compact.begin",
    "journal.rewrite.after_tmp",
    "journal.rewrite.after_rename",
    "journal.rewrite.done",
]
CONF = {"logCompactionMinEntries": 400}
CRASH_ENV = {SNAPSHOT_DELAY_ENV: "300"}


def crash_and_verify(cluster: DCluster, step: str, **extra_env: str) -> set[str]:
    """Crash at `step`, restart; returns the acknowledged ids some node lost (none expected)."""
    env = {**CRASH_ENV, CRASH_AT_ENV: step, **extra_env}
    for node in cluster.nodes:
        cluster.start(node, "write", "--window", "20", env=env)
    first = wait_until(lambda: next((n for n in cluster.nodes if not n.alive()), None),
                       timeout_s=60, what=f"a node to crash at {step}")
    code = wait_exit(first)
    assert code == -signal.SIGKILL, f"{first.node_id} exited with {code}, not by the crash"
    assert f"crash_point step={step}" in first.stderr_file.read_text()
    cluster.kill_all()  # the rest of the cluster dies at the same moment
    acked = {a for n in cluster.nodes for a in n.acks()}
    assert len(acked) >= 300, "the crash came before the node acknowledged much"
    applied = cluster.verify_all(env=extra_env)
    return {a for ids in applied.values() for a in acked - ids}


@pytest.mark.parametrize("step", STEPS)
def test_kill9_at_snapshot_step_single_node(tmp_path: Path, step: str) -> None:
    cluster = DCluster(tmp_path, 1, conf=CONF)
    try:
        lost = crash_and_verify(cluster, step)
        assert not lost, f"{len(lost)} acked entries lost after a crash at {step}"
    finally:
        cluster.kill_all()


def test_kill9_of_all_nodes_between_snapshot_rename_and_compaction(tmp_path: Path) -> None:
    cluster = DCluster(tmp_path, 3, conf=CONF)
    try:
        lost = crash_and_verify(cluster, "snapshot.after_dirsync")
        assert not lost, f"{len(lost)} acked entries lost"
    finally:
        cluster.kill_all()


def test_restart_after_crash_keeps_journal_tail_beyond_snapshot(tmp_path: Path) -> None:
    """The window really holds entries only the journal has: the tail must be replayed."""
    cluster = DCluster(tmp_path, 1, conf=CONF)
    node = cluster.nodes[0]
    try:
        env = {**CRASH_ENV, CRASH_AT_ENV: "snapshot.after_dirsync"}
        cluster.start(node, "write", "--window", "20", env=env)
        wait_exit(node, timeout_s=60)
        from replication.journal import read_journal_entries
        from replication.snapshots import read_snapshot_file

        snap = read_snapshot_file(node.data / "raft.snapshot")
        journal = read_journal_entries(node.data / "raft.journal")
        assert journal[-1][1] > snap.last[1], "acked entries beyond the snapshot exist"
        cluster.start(node, "verify")
        wait_until(node.out_file.exists, timeout_s=60, what="verify output")
        acked = set(node.acks())
        import json

        ids = set(json.loads(node.out_file.read_text())["ids"])
        assert acked <= ids
    finally:
        cluster.kill_all()


def test_sensitivity_stock_clear_rule_loses_acked_entries(tmp_path: Path) -> None:
    """The same crash with pysyncobj's stock rule (drop the journal when it does not start with
    the snapshot's entries) loses acknowledged entries: the test above exercises the window."""
    cluster = DCluster(tmp_path, 1, conf=CONF)
    try:
        lost = crash_and_verify(cluster, "snapshot.after_dirsync", RAFTMQ_TEST_STOCK_CLEAR="1")
        assert lost, "the stock rule should have dropped the journal tail"
    finally:
        cluster.kill_all()
