"""`BrokerState.apply` is total and deterministic on hostile commands.

A command reaches `apply` from the Raft log, so whatever slipped past the HTTP edge (or a node of
another version) must come back as a result, never an exception: an exception inside a replicated
method would wedge the cluster (issue 2, defect 5). Random sequences mix plausible commands on a
few queues and topics with junk fields of every type, passed through msgpack as the log does.
After each step: the result is a dict, an error has a registered code; at the end the queue
invariants of tests/unit/test_state_props.py hold, a second state fed the same log ends
byte-identical, and a snapshot restores exactly.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import KINDS
from storage.state import _HANDLERS, BrokerState
from tests.fuzz.conftest import fuzz_examples
from tests.unit.test_state_props import check_state

# long runs (FUZZ_EXAMPLES) outlast the suite's 300 s per-test timeout
pytestmark = pytest.mark.timeout(max(300, fuzz_examples() // 10))

OPS = sorted(_HANDLERS) + ["queue.nope", "", "QUEUE.CREATE"]
NAMES = ["a", "b", "t.x", "t.*", "", "-", "a" * 201, "\x00"]
FIELDS = ["queue", "topic", "to", "messages", "receipts", "config", "max_messages", "ack",
          "visibility_timeout_s", "delay_s", "timeout_s", "producer", "id", "publish",
          "offsets", "group", "url", "max_in_flight", "pattern", "headers", "match", "binding"]
T0_MS = 1_700_000_000_000


def junk() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
        st.sampled_from([0, 1, 2, -1, 1000, 1001, 2**53, 0.5, 1e308]),
        st.text(max_size=12), st.sampled_from(NAMES), st.binary(max_size=12),
        st.sampled_from(["manual", "auto", "reject", "drop_oldest", "1.1", "2.3", "#"]))
    return st.recursive(leaf, lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.dictionaries(st.sampled_from(FIELDS + ["body", "key", "partition", "offset", "epoch",
                                                  "seq", "priority", "ttl_s", "dedup_id"]),
                        kids, max_size=4)), max_leaves=10)


def plausible() -> st.SearchStrategy[dict[str, Any]]:
    """Commands that mostly succeed, so the junk meets a state with content."""
    q = st.sampled_from(["a", "b"])
    msg = st.fixed_dictionaries({"body": st.sampled_from([b"x", b"yy"])}, optional={
        "priority": st.integers(0, 9), "group": st.sampled_from(["g1", "g2"]),
        "delay_s": st.sampled_from([0, 1]), "dedup_id": st.sampled_from(["d1", "d2"])})
    return st.one_of(
        st.builds(lambda n: {"op": "queue.create", "queue": n, "config": {}}, q),
        st.builds(lambda n, ms: {"op": "queue.publish", "queue": n, "messages": ms},
                  q, st.lists(msg, min_size=1, max_size=3)),
        st.builds(lambda n, k: {"op": "queue.receive", "queue": n, "max_messages": k,
                                "visibility_timeout_s": None, "ack": "manual"},
                  q, st.integers(1, 3)),
        st.just({"op": "topic.create", "topic": "t.x",
                 "config": {"partitions": 2, "retention": {}, "durability": "fsync"}}),
        st.just({"op": "binding.create", "queue": "b", "pattern": "t.*"}),
        st.just({"op": "topic.publish", "topic": "t.x", "messages": [{"body": b"z"}]}),
        st.just({"op": "producer.register", "id": "p"}))


def hostile_command() -> st.SearchStrategy[Any]:
    fields = st.dictionaries(st.sampled_from(FIELDS), junk(), max_size=5)
    return st.one_of(
        st.builds(lambda op, f: {**f, "op": op}, st.sampled_from(OPS), fields),
        junk())


def through_the_log(cmd: Any) -> Any | None:
    """The command as `apply` gets it from an entry (msgpack), or None if not encodable."""
    try:
        packed = msgpack.packb(cmd, use_bin_type=True)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        return None
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


@settings(max_examples=fuzz_examples(100), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=st.lists(st.tuples(st.one_of(plausible(), hostile_command()),
                                st.sampled_from([0, 0, 1, 999, 5_000, 31_000])),
                      min_size=1, max_size=40))
def test_apply_is_total_and_deterministic(steps: list[tuple[Any, int]]) -> None:
    state, replica = BrokerState(), BrokerState()
    now_ms = T0_MS
    for raw, dt_ms in steps:
        cmd = through_the_log(raw)
        if cmd is None:
            continue
        now_ms += dt_ms
        result = state.apply(cmd, now_ms)
        assert isinstance(result, dict), (cmd, result)
        if "error" in result:
            assert result["error"]["code"] in KINDS, (cmd, result)
        assert replica.apply(through_the_log(raw), now_ms) == result, "apply is not deterministic"
    check_state(state)
    snap = state.encode_snapshot()
    assert replica.encode_snapshot() == snap
    assert BrokerState.decode_snapshot(snap).encode_snapshot() == snap


def test_junk_commands_get_error_results() -> None:
    """The property is not vacuous: junk does reach apply and is refused with a result."""
    state = BrokerState()
    junk_cmds: list[Any] = [
        [], "x", {"op": "queue.publish", "queue": "a", "messages": [{"body": 5}]},
        {"op": "queue.receive", "queue": "a", "max_messages": 2**64 - 1},
        {"op": "topic.create", "topic": "t", "config": {"partitions": [1]}}]
    for cmd in junk_cmds:
        result = state.apply(through_the_log(cmd), T0_MS)
        assert result["error"]["code"] in KINDS, (cmd, result)
