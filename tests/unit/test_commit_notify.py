"""The leader's commit notifications ride on its next append_entries (replication/replica.py,
CommitNotifyDeferral), except when a follower waits on one of the committed entries.

Driven through the pysyncobj attributes the deferral wraps, on a stand-in object: what each
tick does is spelled out here; test_replica.py runs it on a real 3-node cluster.
"""

from __future__ import annotations

from typing import Any

from pysyncobj.monotonic import monotonic as raft_monotonic

from replication.replica import CommitNotifyDeferral

LEADER, FOLLOWER = 2, 0
DELAY_S = 0.002
HEARTBEAT_S = 0.1


class Queue:
    def __init__(self, items: list[tuple[bytes, Any]]) -> None:
        self.items = items

    def get_nowait(self) -> tuple[bytes, Any]:
        return self.items.pop(0)


class Poller:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def poll(self, timeout: float) -> None:
        self.timeouts.append(timeout)


class Sync:
    """The parts of SyncObj the deferral reads and wraps, with pysyncobj's attribute names."""

    def __init__(self, queued: list[tuple[bytes, Any]] | None = None) -> None:
        self._SyncObj__raftState = LEADER
        self._SyncObj__newAppendEntriesTime = raft_monotonic() + HEARTBEAT_S
        self._SyncObj__commandsQueue = Queue(list(queued or []))
        self._poller = Poller()
        self.raftLastApplied = 0
        self.last_index = 0
        self.commit_index = 0

    def _SyncObj__getCurrentLogIndex(self) -> int:
        return self.last_index

    def _SyncObj__applyLogEntries(self) -> bool:
        applied = self.commit_index > self.raftLastApplied
        self.raftLastApplied = self.commit_index
        return applied  # pysyncobj: "send append_entries now" after applying

    def take_command(self) -> tuple[bytes, Any]:
        """_checkCommandsToApply on the leader: take one command, append it to the log."""
        item: tuple[bytes, Any] = self._SyncObj__commandsQueue.get_nowait()
        self.last_index += 1
        return item

    def append_entries_left(self) -> None:
        """What __sendAppendEntries does to the next-append deadline."""
        self._SyncObj__newAppendEntriesTime = raft_monotonic() + HEARTBEAT_S


def local_callback(result: Any, reason: int) -> None:
    pass


def one_deferred_commit() -> tuple[Sync, CommitNotifyDeferral, bool]:
    """The leader takes its own command, commits and applies it: (sync, deferral, send now)."""
    sync = Sync([(b"cmd", local_callback)])
    deferral = CommitNotifyDeferral(sync, DELAY_S)
    sync.take_command()
    sync.commit_index = 1
    return sync, deferral, sync._SyncObj__applyLogEntries()


def test_a_commit_of_the_leaders_own_entry_waits_for_the_next_append() -> None:
    sync, deferral, send_now = one_deferred_commit()
    assert send_now is False  # no send of its own
    assert sync._SyncObj__newAppendEntriesTime <= raft_monotonic() + DELAY_S
    sync._poller.poll(0.05)  # the tick's poll, asked for up to 50 ms
    [timeout] = sync._poller.timeouts
    assert 0 <= timeout <= DELAY_S  # it ends when the notification is due
    assert (deferral.deferred, deferral.immediate) == (1, 0)


def test_an_append_that_left_in_the_meantime_carried_the_commit_index() -> None:
    sync, deferral, _ = one_deferred_commit()
    sync.append_entries_left()  # a new entry (or the due notification) went out
    sync._poller.poll(0.05)
    assert sync._poller.timeouts == [0.05] and deferral.pending is False


def test_a_commit_a_follower_waits_for_is_sent_at_once() -> None:
    forwarded = ("node-2", 7)  # pysyncobj's callback for a follower's apply_command
    sync = Sync([(b"mine", local_callback), (b"theirs", forwarded), (b"mine2", local_callback)])
    deferral = CommitNotifyDeferral(sync, DELAY_S)
    for _ in range(3):
        sync.take_command()  # log indexes 1, 2, 3
    assert list(deferral.forwarded) == [2]  # the log index the follower's command got
    sync.commit_index = 1  # only the leader's own entry: deferred
    assert sync._SyncObj__applyLogEntries() is False
    sync.commit_index = 3  # the follower's entry (2) is among this tick's applies
    assert sync._SyncObj__applyLogEntries() is True
    assert (deferral.deferred, deferral.immediate) == (1, 1) and not deferral.forwarded


def test_followers_and_ticks_without_applies_are_left_as_pysyncobj_has_them() -> None:
    sync = Sync()
    deferral = CommitNotifyDeferral(sync, DELAY_S)
    assert sync._SyncObj__applyLogEntries() is False  # nothing applied, nothing to send
    sync._SyncObj__raftState = FOLLOWER
    sync.commit_index = 5
    assert sync._SyncObj__applyLogEntries() is True  # pysyncobj ignores it on a follower
    assert deferral.deferred == 0


def test_a_leader_that_stepped_down_stops_shortening_its_polls() -> None:
    sync, deferral, _ = one_deferred_commit()
    sync._SyncObj__raftState = FOLLOWER
    sync._poller.poll(0.05)
    sync._poller.poll(0.05)
    assert sync._poller.timeouts == [0.05, 0.05] and deferral.pending is False
