"""Determinism: the same commands give the same state and results, byte for byte.

A seeded random stream of every op (valid and malformed) is applied to fresh states; they must
end with identical snapshots, and a restored snapshot must behave exactly like the original.
The stream is also run in subprocesses with different PYTHONHASHSEED values, which catches any
iteration over a set or dict of strings whose order depends on hashing.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from storage.state import BrokerState
from tests.unit.test_state_props import check_state

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ["q0", "q1", "q2", "dlq", "bad name!"]
TOPICS = ["t.a", "t.b"]


class Stream:
    """A seeded random command stream; receipts and producers are drawn from past results."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now_ms = 1_700_000_000_000
        self.receipts: list[str] = []
        self.producers: list[dict[str, Any]] = []

    def next(self) -> tuple[Any, int]:
        rng = self.rng
        step = rng.choice([0, 0, 1, 10, 200, 1_000, 5_000, 30_000, -500])
        self.now_ms += step
        kind = rng.random()
        if kind < 0.02:
            return rng.choice([None, 7, "x", [], {"op": 3}, {"op": "nope"}]), self.now_ms
        ops = [self.create, self.publish, self.publish, self.publish, self.receive,
               self.receive, self.ack, self.nack, self.visibility, self.purge, self.redrive,
               self.delete, self.tick, self.topic, self.register, self.txn]
        return rng.choice(ops)(), self.now_ms

    def observe(self, result: dict[str, Any]) -> None:
        for m in result.get("messages") or []:
            if isinstance(m, dict) and m.get("receipt"):
                self.receipts.append(m["receipt"])
        if "epoch" in result and "id" in result:
            self.producers.append({"id": result["id"], "epoch": result["epoch"], "seq": 0})
        self.receipts = self.receipts[-50:]

    def q(self) -> str:
        return self.rng.choice(QUEUES)

    def create(self) -> dict[str, Any]:
        rng = self.rng
        config: dict[str, Any] = {}
        for key, values in (("visibility_timeout_s", [1, 5, 30]), ("max_receives", [0, 2, 3]),
                            ("dead_letter_queue", [None, "dlq", "q2"]),
                            ("message_ttl_s", [0, 10, 60]), ("max_length", [0, 5, 20]),
                            ("max_bytes", [0, 100]), ("overflow", ["reject", "drop_oldest"]),
                            ("delay_s", [0, 2]), ("dedup_window_s", [0, 5, 300]),
                            ("expires_s", [0, 120]), ("bogus", ["x"])):
            if rng.random() < 0.3:
                config[key] = rng.choice(values)
        return {"op": "queue.create", "queue": self.q(), "config": config}

    def message(self) -> dict[str, Any]:
        rng = self.rng
        msg: dict[str, Any] = {"body": rng.choice(["a", "bb", "ccc" * 10, b"\x00\xff", 5])}
        if rng.random() < 0.3:
            msg["priority"] = rng.choice([0, 1, 5, 9, 10, True])
        if rng.random() < 0.3:
            msg["group"] = rng.choice(["g1", "g2", "g3"])
        if rng.random() < 0.2:
            msg["delay_s"] = rng.choice([0, 1, 3.5, 20])
        if rng.random() < 0.2:
            msg["ttl_s"] = rng.choice([1, 4, 30])
        if rng.random() < 0.2:
            msg["dedup_id"] = rng.choice(["d1", "d2", "d3"])
        if rng.random() < 0.1:
            msg["headers"] = rng.choice([{"k": "v"}, {"k": 1}])
        return msg

    def publish(self) -> dict[str, Any]:
        n = self.rng.choice([1, 1, 2, 5])
        cmd: dict[str, Any] = {"op": "queue.publish", "queue": self.q(),
                               "messages": [self.message() for _ in range(n)]}
        self._maybe_producer(cmd)
        return cmd

    def _maybe_producer(self, cmd: dict[str, Any]) -> None:
        if self.producers and self.rng.random() < 0.3:
            p = self.rng.choice(self.producers)
            seq = p["seq"] + self.rng.choice([0, 0, 0, -1, 1, 2])
            p["seq"] = max(p["seq"], seq)
            cmd["producer"] = {"id": p["id"], "epoch": p["epoch"], "seq": max(0, seq)}

    def receive(self) -> dict[str, Any]:
        rng = self.rng
        cmd: dict[str, Any] = {"op": "queue.receive", "queue": self.q(),
                               "max_messages": rng.choice([1, 2, 10, 0])}
        if rng.random() < 0.2:
            cmd["ack"] = rng.choice(["auto", "manual", "maybe"])
        if rng.random() < 0.2:
            cmd["visibility_timeout_s"] = rng.choice([0, 1, 2.5, 100])
        return cmd

    def some_receipts(self) -> list[Any]:
        picks = [self.rng.choice(self.receipts) for _ in range(self.rng.choice([1, 2]))
                 if self.receipts]
        return picks + (["junk"] if self.rng.random() < 0.1 else [])

    def ack(self) -> dict[str, Any]:
        return {"op": "queue.ack", "queue": self.q(), "receipts": self.some_receipts()}

    def nack(self) -> dict[str, Any]:
        return {"op": "queue.nack", "queue": self.q(), "receipts": self.some_receipts(),
                "delay_s": self.rng.choice([0, 0, 2])}

    def visibility(self) -> dict[str, Any]:
        return {"op": "queue.visibility", "queue": self.q(), "receipts": self.some_receipts(),
                "timeout_s": self.rng.choice([0, 3, 60, -1])}

    def purge(self) -> dict[str, Any]:
        return {"op": "queue.purge", "queue": self.q()}

    def redrive(self) -> dict[str, Any]:
        return {"op": "queue.redrive", "queue": self.q(), "to": self.q(),
                "max_messages": self.rng.choice([1, 5, 100])}

    def delete(self) -> dict[str, Any]:
        if self.rng.random() < 0.5:
            return {"op": "tick"}
        return {"op": "queue.delete", "queue": self.q()}

    def tick(self) -> dict[str, Any]:
        return {"op": self.rng.choice(["tick", "noop"])}

    def topic(self) -> dict[str, Any]:
        rng = self.rng
        topic = rng.choice(TOPICS)
        choice = rng.random()
        if choice < 0.2:
            return {"op": "topic.create", "topic": topic,
                    "config": {"partitions": rng.choice([1, 2]),
                               "retention": {"max_messages": 10, "max_bytes": 0,
                                             "max_age_s": 60}}}
        if choice < 0.35:
            return {"op": "binding.create", "queue": self.q(), "topic": rng.choice(["t.*", "#"])}
        cmd: dict[str, Any] = {"op": "topic.publish", "topic": topic,
                               "messages": [{"body": "tm", "headers": {}, "key": None}]}
        self._maybe_producer(cmd)
        return cmd

    def register(self) -> dict[str, Any]:
        if self.producers and self.rng.random() < 0.3:
            return {"op": "producer.register", "id": self.rng.choice(self.producers)["id"]}
        return {"op": "producer.register"}

    def txn(self) -> dict[str, Any]:
        cmd: dict[str, Any] = {
            "op": "txn",
            "ack": [{"queue": self.q(), "receipts": self.some_receipts()}],
            "publish": [{"queue": self.q(), "messages": [self.message()]}],
        }
        if self.rng.random() < 0.3:
            cmd["publish"].append({"topic": self.rng.choice(TOPICS),
                                   "messages": [{"body": "x", "headers": {}, "key": "k"}]})
        self._maybe_producer(cmd)
        return cmd


def run_stream(states: list[BrokerState], seed: int, n: int,
               stream: Stream | None = None) -> Stream:
    stream = stream or Stream(seed)
    for _ in range(n):
        cmd, now_ms = stream.next()
        results = [s.apply(cmd, now_ms) for s in states]
        for r in results[1:]:
            assert r == results[0], (cmd, r, results[0])
        stream.observe(results[0])
    return stream


def test_two_fresh_states_end_byte_identical() -> None:
    a, b = BrokerState(), BrokerState()
    run_stream([a, b], seed=1, n=4000)
    assert a.encode_snapshot() == b.encode_snapshot()
    check_state(a)  # the queue invariants hold after a stream of every op, topics included
    assert len(a.queues.queues) > 0


def test_restore_equals_original_and_keeps_behaving_identically() -> None:
    original = BrokerState()
    stream = run_stream([original], seed=2, n=2500)
    snap = original.encode_snapshot()
    restored = BrokerState.decode_snapshot(snap)
    assert restored.encode_snapshot() == snap
    run_stream([original, restored], seed=2, n=2500, stream=stream)
    assert restored.encode_snapshot() == original.encode_snapshot()


def test_snapshot_roundtrip_at_many_points() -> None:
    state = BrokerState()
    stream = Stream(3)
    for _ in range(20):
        run_stream([state], seed=3, n=100, stream=stream)
        snap = state.encode_snapshot()
        state = BrokerState.decode_snapshot(snap)
        assert state.encode_snapshot() == snap


def test_malformed_commands_never_raise() -> None:
    state = BrokerState()
    for cmd in [None, 1, "x", [], {}, {"op": None}, {"op": "queue.create"},
                {"op": "queue.create", "queue": "q", "config": "x"},
                {"op": "queue.publish", "queue": "q", "messages": "x"},
                {"op": "queue.receive", "queue": 5}, {"op": "queue.ack", "queue": "q"},
                {"op": "txn"}, {"op": "txn", "ack": "x"}, {"op": "txn", "publish": [1]},
                {"op": "producer.register", "id": 3}, {"op": "topic.publish"},
                {"op": "queue.redrive", "queue": "q", "to": "q", "max_messages": True}]:
        result = state.apply(cmd, 1)
        assert result["error"]["code"] == "invalid_request", (cmd, result)


_CHILD = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.unit.test_determinism import run_stream
from storage.state import BrokerState
s = BrokerState()
run_stream([s], seed=4, n=2000)
print(hashlib.sha256(s.encode_snapshot()).hexdigest())
"""


def test_same_snapshot_under_different_hash_seeds() -> None:
    digests = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT))],
                             env=env, capture_output=True, text=True, timeout=120, check=True)
        digests.append(out.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    s = BrokerState()
    run_stream([s], seed=4, n=2000)
    assert hashlib.sha256(s.encode_snapshot()).hexdigest() == digests[0]
