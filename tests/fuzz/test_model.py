"""Model-based test: one queue of BrokerState against a tiny reference model.

tests/unit/test_state_props.py checks internal invariants of random multi-queue sequences; this
test checks behaviour a consumer relies on, step by step, against an independent model of one
queue (ready set ordered by priority then publish order, in-flight map with leases, receipts):

* every receive delivers exactly the ids the model predicts, in that order, with the leases and
  receive counts the model predicts, and a receipt never seen before;
* ack / nack / visibility with current, stale (superseded, acked, expired, purged) and garbage
  receipts give the same counts and the same stale lists;
* after every step the queue's stats and each message's state equal the model's: no message is
  both ready and in flight, and published = present + acked + purged + dead-lettered, so nothing
  is lost without an ack, a purge or max_receives;
* time advances between steps (leases expire, nack delays end) and a snapshot round trip in the
  middle of a sequence changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from storage.queues import DELAYED, INFLIGHT, READY
from storage.state import BrokerState
from tests.fuzz.conftest import fuzz_examples

# long runs (FUZZ_EXAMPLES) outlast the suite's 300 s per-test timeout
pytestmark = pytest.mark.timeout(max(300, fuzz_examples() // 10))

QUEUE = "q"
START_MS = 1_700_000_000_000
STEP_DT_MS = [0, 0, 0, 1, 700, 1_000, 2_500, 6_000]
GARBAGE_RECEIPTS = ["x", "1.", ".1", "1.1.1", "-1.1", "99999.1", "1.99999", "0.0",
                    "a" * 64, "1 .1", "\u00e9.1", "1.1\x00"]
MODEL_STATES = {"ready": READY, "inflight": INFLIGHT, "delayed": DELAYED}


FULL_WIDTH = str.maketrans("0123456789", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17"
                                         "\uff18\uff19")


def spelled_otherwise(receipt: str) -> str:
    """Another spelling of the same numbers: leading zero, full-width or superscript digits."""
    head, _, tail = receipt.partition(".")
    spellings = [f"0{receipt}", f"{head}.0{tail}", receipt.translate(FULL_WIDTH),
                 f"{head}.{tail}\u00b9"]
    return spellings[len(receipt) % len(spellings)]


@dataclass
class ModelMsg:
    id: str
    body: bytes
    priority: int
    pos: int
    state: str = "ready"
    receipt: str | None = None
    lease_ms: int = 0
    ready_at_ms: int = 0
    receive_count: int = 0


class QueueModel:
    """The reference: what a consumer of one queue may rely on, written as plainly as possible."""

    def __init__(self, visibility_s: int, max_receives: int) -> None:
        self.visibility_ms = visibility_s * 1000
        self.max_receives = max_receives
        self.msgs: dict[str, ModelMsg] = {}
        self.current: dict[str, str] = {}  # receipt -> message id, for live deliveries only
        self.next_pos = 0
        self.published = self.acked = self.purged = self.dead = 0

    def advance(self, now_ms: int) -> None:
        for m in list(self.msgs.values()):
            if m.state == "delayed" and m.ready_at_ms <= now_ms:
                m.state = "ready"
            elif m.state == "inflight" and m.lease_ms <= now_ms:
                self.release(m, 0, now_ms)

    def release(self, m: ModelMsg, delay_ms: int, now_ms: int) -> None:
        assert m.state == "inflight" and m.receipt is not None
        del self.current[m.receipt]
        m.receipt = None
        if self.max_receives and m.receive_count >= self.max_receives:
            del self.msgs[m.id]  # no dead-letter queue configured: dropped, and counted
            self.dead += 1
        elif delay_ms > 0:
            m.state, m.ready_at_ms = "delayed", now_ms + delay_ms
        else:
            m.state = "ready"

    def publish(self, ids: list[str], bodies: list[bytes], priority: int, delay_ms: int,
                now_ms: int) -> None:
        for mid, body in zip(ids, bodies, strict=True):
            assert mid not in self.msgs, "a message id was reused"
            self.next_pos += 1
            m = ModelMsg(mid, body, priority, self.next_pos)
            if delay_ms > 0:
                m.state, m.ready_at_ms = "delayed", now_ms + delay_ms
            self.msgs[mid] = m
            self.published += 1

    def next_ready(self, n: int) -> list[ModelMsg]:
        ready = [m for m in self.msgs.values() if m.state == "ready"]
        return sorted(ready, key=lambda m: (-m.priority, m.pos))[:n]

    def deliver(self, m: ModelMsg, receipt: str | None, vis_ms: int, now_ms: int) -> None:
        m.receive_count += 1
        if receipt is None:  # ack: auto
            del self.msgs[m.id]
            self.acked += 1
            return
        m.state, m.receipt, m.lease_ms = "inflight", receipt, now_ms + vis_ms
        self.current[receipt] = m.id

    def take(self, receipt: str) -> ModelMsg | None:
        mid = self.current.get(receipt)
        return None if mid is None else self.msgs[mid]


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = BrokerState()
        self.now_ms = START_MS
        self.model = QueueModel(30, 0)
        self.issued: list[str] = []

    @initialize(visibility_s=st.sampled_from([0, 1, 2, 30]), max_receives=st.sampled_from([0, 2]))
    def create(self, visibility_s: int, max_receives: int) -> None:
        self.model = QueueModel(visibility_s, max_receives)
        config = {"visibility_timeout_s": visibility_s, "max_receives": max_receives}
        result = self.apply({"op": "queue.create", "queue": QUEUE, "config": config}, 0)
        assert result["created"] is True

    def apply(self, cmd: dict[str, Any], dt_ms: int) -> dict[str, Any]:
        self.now_ms += dt_ms
        self.model.advance(self.now_ms)
        if dt_ms and cmd.get("op") != "tick":
            # the leader ticks about twice a second: time reaches apply through its ticks
            # (an entry stamped by another node moves it only clock_lead_ms_max past a tick)
            assert self.state.apply({"op": "tick"}, self.now_ms) == {}
        result = self.state.apply(cmd, self.now_ms)
        assert isinstance(result, dict) and "error" not in result, (cmd, result)
        return result

    def receipts(self, data: st.DataObject) -> list[str]:
        pool = st.sampled_from(self.issued) if self.issued else st.sampled_from(GARBAGE_RECEIPTS)
        alias = pool.map(spelled_otherwise) if self.issued else pool  # never issued: stale
        choice = st.one_of(pool, pool, pool, alias, st.sampled_from(GARBAGE_RECEIPTS))
        return data.draw(st.lists(choice, min_size=1, max_size=4), label="receipts")

    # ----- rules
    @rule(dt=st.sampled_from(STEP_DT_MS), n=st.integers(1, 3), priority=st.integers(0, 9),
          delay_s=st.sampled_from([0, 0, 0, 1, 3]))
    def publish(self, dt: int, n: int, priority: int, delay_s: int) -> None:
        bodies = [f"m{self.model.published + i}".encode() for i in range(n)]
        msgs = [{"body": b, "priority": priority, "delay_s": delay_s} for b in bodies]
        result = self.apply({"op": "queue.publish", "queue": QUEUE, "messages": msgs}, dt)
        ids = [m["id"] for m in result["messages"]]
        assert len(set(ids)) == n and not any(m["duplicate"] for m in result["messages"])
        self.model.publish(ids, bodies, priority, delay_s * 1000, self.now_ms)

    @rule(dt=st.sampled_from(STEP_DT_MS), n=st.integers(1, 4),
          ack=st.sampled_from(["manual", "manual", "auto"]),
          vis_s=st.sampled_from([None, None, 0, 1, 5]))
    def receive(self, dt: int, n: int, ack: str, vis_s: int | None) -> None:
        cmd = {"op": "queue.receive", "queue": QUEUE, "max_messages": n,
               "visibility_timeout_s": vis_s, "ack": ack}
        got = self.apply(cmd, dt)["messages"]
        expected = self.model.next_ready(n)
        assert [m["id"] for m in got] == [m.id for m in expected], "wrong messages delivered"
        vis_ms = self.model.visibility_ms if vis_s is None else vis_s * 1000
        for delivered, m in zip(got, expected, strict=True):
            assert delivered["body"] == m.body
            assert delivered["receive_count"] == m.receive_count + 1
            receipt = delivered["receipt"]
            if ack == "auto":
                assert receipt is None
            else:
                assert receipt not in self.issued, "a receipt was issued twice"
                assert delivered["lease_expires_at"] == self.now_ms + vis_ms
                self.issued.append(receipt)
            self.model.deliver(m, receipt, vis_ms, self.now_ms)

    @rule(dt=st.sampled_from(STEP_DT_MS), data=st.data())
    def ack(self, dt: int, data: st.DataObject) -> None:
        receipts = self.receipts(data)
        result = self.apply({"op": "queue.ack", "queue": QUEUE, "receipts": receipts}, dt)
        acked, stale = 0, []
        for r in receipts:
            m = self.model.take(r)
            if m is None:
                stale.append(r)
                continue
            del self.model.current[r]
            del self.model.msgs[m.id]
            self.model.acked += 1
            acked += 1
        assert result == {"acked": acked, "stale": stale}

    @rule(dt=st.sampled_from(STEP_DT_MS), delay_s=st.sampled_from([0, 0, 2]), data=st.data())
    def nack(self, dt: int, delay_s: int, data: st.DataObject) -> None:
        receipts = self.receipts(data)
        result = self.apply({"op": "queue.nack", "queue": QUEUE, "receipts": receipts,
                             "delay_s": delay_s}, dt)
        nacked, stale = 0, []
        for r in receipts:
            m = self.model.take(r)
            if m is None:
                stale.append(r)
                continue
            self.model.release(m, delay_s * 1000, self.now_ms)
            nacked += 1
        assert result == {"nacked": nacked, "stale": stale}

    @rule(dt=st.sampled_from(STEP_DT_MS), timeout_s=st.sampled_from([0, 1, 5]), data=st.data())
    def visibility(self, dt: int, timeout_s: int, data: st.DataObject) -> None:
        receipts = self.receipts(data)
        result = self.apply({"op": "queue.visibility", "queue": QUEUE, "receipts": receipts,
                             "timeout_s": timeout_s}, dt)
        updated, stale = [], []
        for r in receipts:
            m = self.model.take(r)
            if m is None:
                stale.append(r)
            elif timeout_s == 0:
                self.model.release(m, 0, self.now_ms)
                updated.append({"receipt": r, "lease_expires_at": self.now_ms})
            else:
                m.lease_ms = self.now_ms + timeout_s * 1000
                updated.append({"receipt": r, "lease_expires_at": m.lease_ms})
        assert result == {"updated": updated, "stale": stale}

    @rule(dt=st.sampled_from(STEP_DT_MS))
    def purge(self, dt: int) -> None:
        result = self.apply({"op": "queue.purge", "queue": QUEUE}, dt)
        assert result == {"purged": len(self.model.msgs)}
        self.model.purged += len(self.model.msgs)
        self.model.msgs.clear()
        self.model.current.clear()

    @rule(dt=st.sampled_from([1, 999, 1_000, 3_000, 31_000]))
    def tick(self, dt: int) -> None:
        assert self.apply({"op": "tick"}, dt) == {}

    @rule()
    def snapshot_round_trip(self) -> None:
        snap = self.state.encode_snapshot()
        self.state = BrokerState.decode_snapshot(snap)
        assert self.state.encode_snapshot() == snap

    # ----- after every step
    @invariant()
    def same_as_model(self) -> None:
        q = self.state.queues.queues.get(QUEUE)
        if q is None:
            return  # before initialize
        model = self.model
        assert {mid: m.state for mid, m in q.msgs.items()} == \
            {int(mid): MODEL_STATES[m.state] for mid, m in model.msgs.items()}, \
            "a message is in another state than the model's (or lost, or invented)"
        stats = q.stats(self.state.now_ms)
        by_state = {s: sum(1 for m in model.msgs.values() if m.state == s)
                    for s in MODEL_STATES}
        assert (stats["ready"], stats["in_flight"], stats["delayed"]) == \
            (by_state["ready"], by_state["inflight"], by_state["delayed"])
        assert (stats["published_total"], stats["acked_total"], stats["purged_total"],
                stats["dead_lettered_total"]) == (model.published, model.acked, model.purged,
                                                  model.dead)
        assert model.published == len(model.msgs) + model.acked + model.purged + model.dead
        for receipt, mid in model.current.items():
            assert q.current(receipt) is q.msgs[int(mid)], f"receipt {receipt} is not live"


QueueMachine.TestCase.settings = settings(
    max_examples=fuzz_examples(100), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestQueueAgainstModel = QueueMachine.TestCase


def test_model_catches_a_wrong_delivery_order() -> None:
    """The comparison can fail: a state whose ready order is tampered with is caught."""
    machine = QueueMachine()
    machine.create(visibility_s=30, max_receives=0)
    machine.publish(dt=0, n=1, priority=0, delay_s=0)
    machine.publish(dt=0, n=1, priority=5, delay_s=0)
    machine.model.msgs[next(iter(machine.model.msgs))].priority = 9  # the model now disagrees
    with pytest.raises(AssertionError, match="wrong messages delivered"):
        machine.receive(dt=0, n=1, ack="manual", vis_s=None)


def test_model_catches_a_lost_message() -> None:
    machine = QueueMachine()
    machine.create(visibility_s=30, max_receives=0)
    machine.publish(dt=0, n=2, priority=0, delay_s=0)
    q = machine.state.queues.queues[QUEUE]
    q.msgs.pop(next(iter(q.msgs)))  # lost without ack or purge
    with pytest.raises(AssertionError, match="another state"):
        machine.same_as_model()
