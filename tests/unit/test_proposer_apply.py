"""The apply side of an entry (replication.replica.ApplyCore): total, one result per command."""

from __future__ import annotations

from typing import Any

from replication.proposer import build_entry, pack_command
from replication.replica import ApplyCore


class ExplodingState:
    """Raises on op "boom"; records what it applied and the time it was given."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, int]] = []

    def apply(self, cmd: dict[str, Any], now_ms: int) -> dict[str, Any]:
        if cmd["op"] == "boom":
            raise KeyError("missing")
        if cmd["op"] == "weird":
            return "not a dict"  # type: ignore[return-value]
        self.applied.append((cmd["op"], now_ms))
        return {"ok": cmd["op"]}

    def encode_snapshot(self) -> bytes:
        return b""


def entry(*ops: str, now_ms: int = 1_000) -> bytes:
    return build_entry(now_ms, [pack_command({"op": op}) for op in ops])


def test_a_raising_command_gets_internal_error_and_the_rest_of_the_entry_applies() -> None:
    state = ExplodingState()
    notified: list[int] = []
    core = ApplyCore(state, lambda: notified.append(1))
    results = core.apply_blob(entry("a", "boom", "b", "weird", "c", now_ms=42))
    assert results[0] == {"ok": "a"} and results[2] == {"ok": "b"} and results[4] == {"ok": "c"}
    assert results[1]["error"]["code"] == "internal_error"
    assert "KeyError" in results[1]["error"]["message"]
    assert results[3]["error"]["code"] == "internal_error"
    assert state.applied == [("a", 42), ("b", 42), ("c", 42)]
    assert core.apply_errors == 2 and core.commands_applied == 5 and notified == [1]
    assert core.apply_blob(entry("d")) == [{"ok": "d"}]  # nothing is wedged


def test_an_undecodable_entry_is_answered_not_raised() -> None:
    core = ApplyCore(ExplodingState(), lambda: None)
    results = core.apply_blob(b"\xc1 not msgpack")
    assert results[0]["error"]["code"] == "internal_error"
    assert core.apply_blob(entry("e")) == [{"ok": "e"}]


def test_a_listener_that_raises_does_not_break_apply() -> None:
    def bad_listener() -> None:
        raise RuntimeError("listener bug")

    core = ApplyCore(ExplodingState(), bad_listener)
    assert core.apply_blob(entry("f")) == [{"ok": "f"}]


class FakePoller:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def poll(self, timeout: float) -> None:
        self.timeouts.append(timeout)


class FakeSync:
    def __init__(self) -> None:
        self._poller = FakePoller()
        self.leader = False

    def _isLeader(self) -> bool:  # noqa: N802 (pysyncobj's name)
        return self.leader


class FakeJournal:
    def __init__(self) -> None:
        self.dirty = False
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1
        self.dirty = False

    def sync_soon(self) -> None:  # the real one syncs here unless only `memory` records wait
        self.sync()


def test_leader_syncs_new_entries_before_each_poll_and_followers_do_not() -> None:
    from replication.replica import _sync_leader_before_poll

    sync, journal = FakeSync(), FakeJournal()
    inner = sync._poller
    _sync_leader_before_poll(sync, journal)
    journal.dirty = True
    sync._poller.poll(0.05)  # follower: its acks are synced by the transport, not here
    assert journal.syncs == 0 and journal.dirty
    sync.leader = True
    sync._poller.poll(0.05)
    sync._poller.poll(0.05)  # clean: no second fsync
    assert journal.syncs == 1 and not journal.dirty
    assert inner.timeouts == [0.05, 0.05, 0.05]  # the real poll still runs every time
