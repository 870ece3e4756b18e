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
