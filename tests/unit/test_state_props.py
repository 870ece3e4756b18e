"""Property test: any command sequence keeps the queue invariants.

No message is in two states or two queues; counters match the messages; every message that left
a queue is accounted for (ack, dead letter or expiry, overflow drop, purge, redrive); at most one
message of a group is in flight; every pending timer is scheduled; a snapshot restores exactly.
"""

from __future__ import annotations

import heapq
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import KINDS
from storage.queues import (
    DELAYED,
    EMPTY_HEADERS,
    INFLIGHT,
    READY,
    WAITING,
    Queue,
    receipt_of,
)
from storage.state import BrokerState

QUEUES = ["a", "b", "dlq"]


def check_queue(q: Queue, now_ms: int) -> None:
    by_state = {READY: 0, INFLIGHT: 0, DELAYED: 0, WAITING: 0}
    for mid, m in q.msgs.items():
        assert m.id == mid
        by_state[m.state] += 1
    assert by_state == {READY: q.ready_n, INFLIGHT: q.inflight_n, DELAYED: q.delayed_n,
                        WAITING: q.waiting_n}
    assert q.total_bytes == sum(len(m.body) for m in q.msgs.values())
    assert q.ready_bytes == sum(len(m.body) for m in q.msgs.values() if m.state == READY)
    assert q.moved_pos.keys() <= q.msgs.keys()  # only messages still here, moved in
    assert all(pos != mid for mid, pos in q.moved_pos.items())
    ready_entries = {e for heap in q.ready for e in heap}
    leases = set(q.leases)
    delayed = set(q.delayed)
    ttls = set(q.ttls)
    for m in q.msgs.values():
        if m.state == READY:
            assert (q.pos_of(m.id), m.id) in ready_entries and m.delivery == 0
        elif m.state == INFLIGHT:
            assert (m.due_ms, m.id, m.delivery) in leases and m.delivery > 0
        elif m.state == DELAYED:
            assert (m.due_ms, m.id) in delayed
        if m.expires_at and (m.state != INFLIGHT or m.expires_at > now_ms):
            # (a leased message past its TTL expires when its lease ends)
            assert (m.expires_at, m.id) in ttls
    for heap in (*(level.heap for level in q.ready), q.leases, q.delayed, q.ttls):
        assert all(heap[i] <= heap[c] for i in range(len(heap))
                   for c in (2 * i + 1, 2 * i + 2) if c < len(heap))
    for level in q.ready:
        assert list(level.fifo) == sorted(set(level.fifo)), "fifo in enqueue order"
        assert not level or q._valid_ready(level.top()) is not None, "tops are clean"
    check_groups(q)
    removed = (q.acked_total + q.dead_lettered_total + q.dropped_total + q.purged_total
               + q.moved_out_total)
    assert len(q.msgs) == q.published_total - removed, "a message was lost or invented"


def check_groups(q: Queue) -> None:
    for name, g in q.groups.items():
        assert g.active is not None, "an idle group is kept"
        active = q.msgs[g.active]
        assert active.group == name and active.state != WAITING
    for m in q.msgs.values():
        if m.group is None:
            assert m.state != WAITING
            continue
        g = q.groups.get(m.group)
        if m.state in (READY, INFLIGHT):
            assert g is not None and g.active == m.id, "two of a group available at once"
        if m.state == WAITING:
            assert g is not None and m.id in g.waiting


def check_state(s: BrokerState) -> None:
    assert EMPTY_HEADERS == {}, "the shared empty header dict was changed in place"
    seen: dict[int, str] = {}
    timers = set(s.queues.timers)
    for name, q in s.queues.queues.items():
        check_queue(q, s.now_ms)
        for mid in q.msgs:
            assert mid not in seen, f"message {mid} in {seen.get(mid)} and {name}"
            seen[mid] = name
        due = q.next_due()
        if due is not None:
            assert q.scheduled_ms is not None and q.scheduled_ms <= due
            assert (q.scheduled_ms, name) in timers
        assert all(m.id < s.queues.next_msg_id for m in q.msgs.values())


def message() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"body": st.sampled_from(["x", "yy", "zzzz"])}, optional={
        "priority": st.integers(0, 9), "group": st.sampled_from(["g1", "g2"]),
        "delay_s": st.sampled_from([0, 1, 5]), "ttl_s": st.sampled_from([1, 3, 20]),
        "dedup_id": st.sampled_from(["d1", "d2"]),
    })


config = st.fixed_dictionaries({}, optional={
    "visibility_timeout_s": st.sampled_from([0, 1, 2, 30]),
    "max_receives": st.sampled_from([0, 1, 2]),
    "dead_letter_queue": st.sampled_from(["dlq", "b"]),
    "message_ttl_s": st.sampled_from([0, 2, 10]),
    "max_length": st.sampled_from([0, 2, 4]),
    "max_bytes": st.sampled_from([0, 6]),
    "overflow": st.sampled_from(["reject", "drop_oldest"]),
    "delay_s": st.sampled_from([0, 1]),
    "dedup_window_s": st.sampled_from([0, 2]),
    "expires_s": st.sampled_from([0, 10]),
})


def command(data: st.DataObject, receipts: list[str]) -> dict[str, Any]:
    queue = data.draw(st.sampled_from(QUEUES))
    op = data.draw(st.sampled_from(["create", "publish", "publish", "receive", "receive",
                                    "ack", "nack", "vis", "purge", "redrive", "delete",
                                    "tick"]))
    if op == "create":
        return {"op": "queue.create", "queue": queue, "config": data.draw(config)}
    if op == "publish":
        return {"op": "queue.publish", "queue": queue,
                "messages": data.draw(st.lists(message(), min_size=1, max_size=4))}
    if op == "receive":
        return {"op": "queue.receive", "queue": queue,
                "max_messages": data.draw(st.integers(1, 4)),
                "ack": data.draw(st.sampled_from(["manual", "manual", "auto"]))}
    if op in ("ack", "nack", "vis"):
        picked = data.draw(st.lists(st.sampled_from(receipts), min_size=1, max_size=3)) \
            if receipts else ["0.0"]
        cmd: dict[str, Any] = {"op": f"queue.{op}".replace("vis", "visibility"),
                               "queue": queue, "receipts": picked}
        if op == "nack":
            cmd["delay_s"] = data.draw(st.sampled_from([0, 2]))
        if op == "vis":
            cmd["timeout_s"] = data.draw(st.sampled_from([0, 1, 5]))
        return cmd
    if op == "redrive":
        return {"op": "queue.redrive", "queue": queue, "to": data.draw(st.sampled_from(QUEUES)),
                "max_messages": data.draw(st.integers(1, 5))}
    if op in ("purge", "delete"):
        return {"op": f"queue.{op}", "queue": queue}
    return {"op": "tick"}


@pytest.fixture(autouse=True)
def eager_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compact heaps on every command, so the property test exercises compaction too."""
    monkeypatch.setattr(Queue, "COMPACT_SLACK", 0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_command_sequence_keeps_invariants(data: st.DataObject) -> None:
    state = BrokerState()
    now_ms = 1_000_000
    receipts: list[str] = []
    for _ in range(data.draw(st.integers(1, 40))):
        now_ms += data.draw(st.sampled_from([0, 0, 500, 1_000, 3_000, 11_000]))
        cmd = command(data, receipts)
        result = state.apply(cmd, now_ms)
        for m in result.get("messages") or []:
            if m.get("receipt"):
                receipts.append(m["receipt"])
        check_state(state)
    snap = state.encode_snapshot()
    restored = BrokerState.decode_snapshot(snap)
    check_state(restored)
    assert restored.encode_snapshot() == snap


def test_checker_detects_a_lost_message() -> None:
    """The invariant checker itself can fail (a test that cannot fail is a defect)."""
    state = BrokerState()
    state.apply({"op": "queue.create", "queue": "a", "config": {}}, 1)
    state.apply({"op": "queue.publish", "queue": "a", "messages": [{"body": "x"}]}, 1)
    q = state.queues.queues["a"]
    mid = next(iter(q.msgs))
    q.msgs[mid].state = INFLIGHT  # ready and in flight at once, by corruption
    try:
        check_state(state)
    except AssertionError:
        pass
    else:
        raise AssertionError("the checker accepted a corrupt state")
    assert receipt_of(q.msgs[mid]).startswith(str(mid)) and heapq is not None


OPS = ["noop", "tick", "queue.create", "queue.delete", "queue.publish", "queue.receive",
       "queue.ack", "queue.nack", "queue.visibility", "queue.purge", "queue.redrive",
       "queue.push_set", "queue.push_delete", "topic.create", "topic.delete", "topic.publish",
       "binding.create", "binding.delete", "group.commit", "producer.register", "txn"]
FIELDS = ["queue", "config", "messages", "max_messages", "visibility_timeout_s", "ack",
          "receipts", "delay_s", "timeout_s", "to", "topic", "producer", "id", "url",
          "max_in_flight", "publish", "offsets", "group"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=5), st.binary(max_size=5),
                    st.sampled_from(["a", "q0", "1.1", "manual", "auto", "http://h/"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["body", "id", "epoch", "seq", "queue", "topic",
                                     "receipts", "messages", "headers", "priority",
                                     "partitions", "x"]), inner, max_size=4)),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPS),
                          st.dictionaries(st.sampled_from(FIELDS), values, max_size=5)),
                max_size=8))
def test_garbage_commands_are_error_results_never_exceptions(
        cmds: list[tuple[str, dict[str, Any]]]) -> None:
    state = BrokerState()
    state.apply({"op": "queue.create", "queue": "a", "config": {}}, 1)
    state.apply({"op": "queue.publish", "queue": "a", "messages": [{"body": "x"}]}, 1)
    for op, fields in cmds:
        result = state.apply({"op": op, **fields}, 2)
        assert isinstance(result, dict)
        if "error" in result:
            assert result["error"]["code"] in KINDS
    check_state(state)
