"""Queue rules at the state level (API.md "Queues"), time driven by now_ms, no network."""

from __future__ import annotations

from typing import Any

import pytest

from storage.state import BrokerState

T0 = 1_700_000_000_000


class Broker:
    """A BrokerState with a clock and helpers that fail loudly on unexpected errors."""

    def __init__(self) -> None:
        self.state = BrokerState()
        self.now_ms = T0

    def at(self, ms: int) -> Broker:
        self.now_ms = T0 + ms
        return self

    def raw(self, **cmd: Any) -> dict[str, Any]:
        return self.state.apply(cmd, self.now_ms)

    def ok(self, **cmd: Any) -> dict[str, Any]:
        result = self.raw(**cmd)
        assert "error" not in result, result
        return result

    def err(self, code: str, **cmd: Any) -> dict[str, Any]:
        result = self.raw(**cmd)
        assert "error" in result, result
        assert result["error"]["code"] == code, result
        return result["error"]

    def create(self, queue: str = "q", **config: Any) -> dict[str, Any]:
        return self.ok(op="queue.create", queue=queue, config=config)

    def publish(self, queue: str, *bodies: str, **fields: Any) -> list[str]:
        msgs = [{"body": b, **fields} for b in bodies]
        return [m["id"] for m in self.ok(op="queue.publish", queue=queue,
                                         messages=msgs)["messages"]]

    def publish_msgs(self, queue: str, msgs: list[dict[str, Any]]) -> dict[str, Any]:
        return self.ok(op="queue.publish", queue=queue, messages=msgs)

    def receive(self, queue: str = "q", n: int = 10, **kw: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.ok(op="queue.receive", queue=queue,
                                            max_messages=n, **kw)["messages"]
        return out

    def bodies(self, queue: str = "q", n: int = 10, **kw: Any) -> list[bytes]:
        return [m["body"] for m in self.receive(queue, n, **kw)]

    def ack(self, queue: str, *receipts: str) -> dict[str, Any]:
        return self.ok(op="queue.ack", queue=queue, receipts=list(receipts))

    def stats(self, queue: str = "q") -> dict[str, Any]:
        info = self.state.queue_info(queue, self.now_ms)
        assert "error" not in info, info
        stats: dict[str, Any] = info["stats"]
        return stats


@pytest.fixture
def b() -> Broker:
    return Broker()


# ----- lifecycle

def test_create_is_idempotent_with_same_config_and_conflicts_with_another(b: Broker) -> None:
    first = b.create("q", visibility_timeout_s=5)
    assert first["created"] is True and first["queue"]["visibility_timeout_s"] == 5
    again = b.create("q", visibility_timeout_s=5)
    assert again["created"] is False and again["queue"] == first["queue"]
    b.err("already_exists", op="queue.create", queue="q", config={"visibility_timeout_s": 6})


def test_delete_and_missing_queue_errors(b: Broker) -> None:
    b.create("q")
    b.publish("q", "x")
    assert b.ok(op="queue.delete", queue="q") == {"deleted": True}
    b.err("queue_not_found", op="queue.delete", queue="q")
    b.err("queue_not_found", op="queue.publish", queue="q", messages=[{"body": "x"}])
    b.err("queue_not_found", op="queue.receive", queue="q", max_messages=1)
    b.err("queue_not_found", op="queue.ack", queue="q", receipts=["1.1"])
    assert b.state.queue_info("q", b.now_ms)["error"]["code"] == "queue_not_found"
    assert b.state.ready_count("q", b.now_ms) == -1


def test_list_queues_in_creation_order(b: Broker) -> None:
    for name in ("b", "a", "c"):
        b.create(name)
    assert [q["name"] for q in b.state.list_queues(b.now_ms)] == ["b", "a", "c"]


# ----- publish / receive / ack

def test_fifo_receive_and_ack_removes(b: Broker) -> None:
    b.create("q")
    ids = b.publish("q", "m1", "m2", "m3")
    assert len(set(ids)) == 3
    got = b.receive("q", 2)
    assert [m["body"] for m in got] == [b"m1", b"m2"]
    assert [m["id"] for m in got] == ids[:2]
    assert all(m["receive_count"] == 1 and m["published_at"] == T0 for m in got)
    assert b.ack("q", *[m["receipt"] for m in got]) == {"acked": 2, "stale": []}
    assert b.bodies("q") == [b"m3"]
    s = b.stats()
    assert (s["ready"], s["in_flight"], s["published_total"], s["acked_total"]) == (0, 1, 3, 2)


def test_receive_can_ack_the_previous_batch_first(b: Broker) -> None:
    b.create("q")
    b.publish("q", "m1", "m2", "m3", "m4")
    first = b.receive("q", 2)
    receipts = [m["receipt"] for m in first]
    result = b.ok(op="queue.receive", queue="q", max_messages=2,
                  ack_receipts=[*receipts, "99.99"])
    assert [m["body"] for m in result["messages"]] == [b"m3", b"m4"]
    assert (result["acked"], result["stale"]) == (2, ["99.99"])
    s = b.stats()
    assert (s["ready"], s["in_flight"], s["acked_total"]) == (0, 2, 2)
    # the ack applies even when nothing is ready
    last = [m["receipt"] for m in result["messages"]]
    empty = b.ok(op="queue.receive", queue="q", max_messages=5, ack_receipts=last)
    assert empty == {"messages": [], "acked": 2, "stale": []}
    assert b.stats()["in_flight"] == 0


def test_receive_with_acks_on_a_missing_queue_changes_nothing(b: Broker) -> None:
    b.create("q")
    b.publish("q", "m1")
    [m] = b.receive("q", 1)
    b.err("queue_not_found", op="queue.receive", queue="other", max_messages=1,
          ack_receipts=[m["receipt"]])
    b.err("invalid_request", op="queue.receive", queue="q", max_messages=0,
          ack_receipts=[m["receipt"]])
    assert b.stats()["in_flight"] == 1 and b.stats()["acked_total"] == 0


def test_receive_empty_queue_returns_empty_list(b: Broker) -> None:
    b.create("q")
    assert b.receive("q") == []


def test_batch_publish_is_atomic_when_queue_full(b: Broker) -> None:
    b.create("q", max_length=3)
    b.publish("q", "a", "b")
    b.err("queue_full", op="queue.publish", queue="q",
          messages=[{"body": "c"}, {"body": "d"}])
    assert b.stats()["ready"] == 2 and b.stats()["published_total"] == 2
    b.publish("q", "c")
    assert b.bodies("q") == [b"a", b"b", b"c"]


def test_max_bytes_rejects(b: Broker) -> None:
    b.create("q", max_bytes=10)
    b.publish("q", "12345")
    b.err("queue_full", op="queue.publish", queue="q", messages=[{"body": "123456"}])
    b.publish("q", "12345")


def test_visibility_timeout_redelivers_and_old_receipt_is_stale(b: Broker) -> None:
    b.create("q", visibility_timeout_s=10)
    b.publish("q", "x")
    first = b.receive("q")[0]
    assert first["lease_expires_at"] == T0 + 10_000
    assert b.at(9_999).receive("q") == []
    second = b.at(10_000).receive("q")[0]
    assert second["id"] == first["id"] and second["receipt"] != first["receipt"]
    assert second["receive_count"] == 2
    # the old receipt never acks the new delivery
    assert b.ack("q", first["receipt"]) == {"acked": 0, "stale": [first["receipt"]]}
    assert b.stats()["in_flight"] == 1
    assert b.ack("q", second["receipt"]) == {"acked": 1, "stale": []}
    assert b.ack("q", second["receipt"])["stale"] == [second["receipt"]]


def test_tick_fires_timers_without_traffic(b: Broker) -> None:
    b.create("q", visibility_timeout_s=1)
    b.publish("q", "x")
    b.receive("q")
    assert b.stats()["in_flight"] == 1
    b.at(1_000).ok(op="tick")
    s = b.stats()
    assert (s["ready"], s["in_flight"]) == (1, 0)


def test_redelivered_message_keeps_its_place(b: Broker) -> None:
    b.create("q", visibility_timeout_s=5)
    b.publish("q", "first")
    b.receive("q", 1)
    b.publish("q", "second")
    assert b.at(5_000).bodies("q") == [b"first", b"second"]


def test_nacked_and_moved_messages_interleave_with_fresh_ones_in_enqueue_order(
        b: Broker) -> None:
    """Fresh messages sit in a FIFO, returned ones in a heap (storage.queues.ReadyLevel):
    delivery must still follow enqueue order across both, and a message moved in from a
    dead-letter queue queues behind everything enqueued before it."""
    b.create("dlq")
    b.create("q", visibility_timeout_s=5)
    b.publish("dlq", "old")  # the lowest id of all
    b.publish("q", "m1", "m2", "m3", "m4")
    got = b.receive("q", 3)
    b.ok(op="queue.nack", queue="q", receipts=[got[2]["receipt"], got[0]["receipt"]])
    b.ack("q", got[1]["receipt"])
    b.publish("q", "m5")
    assert b.ok(op="queue.redrive", queue="dlq", to="q", max_messages=1) == {"moved": 1}
    b.publish("q", "m6")
    assert b.bodies("q", 2, ack="auto") == [b"m1", b"m3"]
    snap = b.state.encode_snapshot()
    restored = Broker()
    restored.state = type(b.state).decode_snapshot(snap)
    restored.now_ms = b.now_ms
    expected = [b"m4", b"m5", b"old", b"m6"]
    assert restored.bodies("q", 10, ack="auto") == expected
    assert b.bodies("q", 10, ack="auto") == expected


def test_a_snapshot_in_the_older_layouts_restores_the_same_queue(b: Broker) -> None:
    """Snapshots written before ReadyLevel hold each priority's ready entries as one flat heap
    of (pos, id) pairs, and before MSG_FIELDS a list per message with lease_ms and
    ready_at_ms apart; a node restarting from one must deliver in the same order."""
    from storage.queues import DELAYED, MSG_FIELDS

    b.create("q", visibility_timeout_s=5)
    b.publish("q", "a", "b", "c", "d", "e")
    first = b.receive("q", 2)
    b.ok(op="queue.nack", queue="q", receipts=[r["receipt"] for r in first])
    assert b.bodies("q", 1) == [b"a"]  # in flight again, its lease ends in 5 s
    doc = b.state.encode()
    queue = next(q for q in doc["queues"]["queues"] if q["name"] == "q")
    assert queue["ready"][0] == [[3, 4, 5], [2, 2]], "fifo of ids, heap of (pos, id)"
    queue["ready"] = [[x for mid in fifo for x in (mid, mid)] + heap  # the old layouts
                      for fifo, heap in queue["ready"]]
    records, published_at = [], None
    it = iter(queue.pop("messages"))
    for mid, body, headers, priority, published, pos, tail in zip(*[it] * MSG_FIELDS, strict=True):
        published_at = published_at if published is None else published
        record = [mid, body, headers or {}, priority, published_at, mid if pos is None else pos]
        if tail:
            due = tail[-1]
            record += tail[:-1] + ([0, due] if tail[5] == DELAYED else [due, 0])
        records.append(record)
    assert [len(r) for r in records] == [15, 15, 6, 6, 6]
    queue["msgs"] = records
    old = Broker()
    old.state = type(b.state).decode(doc)
    old.now_ms = b.now_ms
    for broker in (b, old):
        assert broker.bodies("q", 10, ack="auto") == [b"b", b"c", b"d", b"e"]
        assert broker.at(5_000).bodies("q", 10, ack="auto") == [b"a"]


def test_receive_visibility_override(b: Broker) -> None:
    b.create("q", visibility_timeout_s=100)
    b.publish("q", "x")
    m = b.receive("q", visibility_timeout_s=2)[0]
    assert m["lease_expires_at"] == T0 + 2_000
    assert b.at(2_000).bodies("q") == [b"x"]


def test_auto_ack_removes_on_receipt(b: Broker) -> None:
    b.create("q", visibility_timeout_s=1)
    b.publish("q", "x", "y")
    got = b.receive("q", ack="auto")
    assert [m["body"] for m in got] == [b"x", b"y"]
    assert all(m["receipt"] is None and m["lease_expires_at"] is None for m in got)
    assert b.at(60_000).receive("q") == []
    assert b.stats()["acked_total"] == 2


def test_nack_returns_now_or_after_delay(b: Broker) -> None:
    b.create("q")
    b.publish("q", "x", "y")
    x, y = b.receive("q", 2)
    assert b.ok(op="queue.nack", queue="q", receipts=[x["receipt"]]) == \
        {"nacked": 1, "stale": []}
    assert b.bodies("q") == [b"x"]
    b.ok(op="queue.nack", queue="q", receipts=[y["receipt"]], delay_s=3)
    assert b.stats()["delayed"] == 1
    assert b.at(2_999).receive("q") == []
    got = b.at(3_000).receive("q")
    assert [m["body"] for m in got] == [b"y"] and got[0]["receive_count"] == 2
    # nacking a stale receipt changes nothing
    assert b.ok(op="queue.nack", queue="q", receipts=[y["receipt"]])["stale"] == [y["receipt"]]
    s = b.stats()
    assert (s["delivered_total"], s["nacked_total"]) == (4, 2)


def test_visibility_extend_shorten_and_release(b: Broker) -> None:
    b.create("q", visibility_timeout_s=10)
    b.publish("q", "x")
    m = b.receive("q")[0]
    r = b.at(5_000).ok(op="queue.visibility", queue="q", receipts=[m["receipt"]], timeout_s=20)
    assert r == {"updated": [{"receipt": m["receipt"], "lease_expires_at": T0 + 25_000}],
                 "stale": []}
    assert b.at(10_000).receive("q") == []  # the original lease no longer fires
    assert b.at(24_999).receive("q") == []
    again = b.at(25_000).receive("q")[0]
    r = b.ok(op="queue.visibility", queue="q", receipts=[again["receipt"]], timeout_s=0)
    assert r["updated"][0]["lease_expires_at"] == T0 + 25_000
    assert b.bodies("q") == [b"x"]
    r = b.ok(op="queue.visibility", queue="q", receipts=[m["receipt"]], timeout_s=5)
    assert r == {"updated": [], "stale": [m["receipt"]]}


def test_purge_removes_everything_and_stales_receipts(b: Broker) -> None:
    b.create("q")
    b.publish("q", "a", "b", "c")
    m = b.receive("q", 1)[0]
    b.publish_msgs("q", [{"body": "d", "delay_s": 10}])
    assert b.ok(op="queue.purge", queue="q") == {"purged": 4}
    s = b.stats()
    assert (s["ready"], s["in_flight"], s["delayed"]) == (0, 0, 0)
    assert b.ack("q", m["receipt"])["stale"] == [m["receipt"]]
    assert b.at(20_000).receive("q") == []
    b.publish("q", "e")
    assert b.bodies("q") == [b"e"]


def test_ids_and_receipts_unique_across_queues(b: Broker) -> None:
    b.create("a")
    b.create("b")
    ids = b.publish("a", "1") + b.publish("b", "2")
    assert len(set(ids)) == 2
    ra = b.receive("a")[0]["receipt"]
    rb = b.receive("b")[0]["receipt"]
    assert ra != rb
    assert b.ack("b", ra) == {"acked": 0, "stale": [ra]}  # a receipt only acks in its queue


def test_garbage_receipts_are_stale_not_errors(b: Broker) -> None:
    b.create("q")
    assert b.ack("q", "nope", "1.x", "99.99")["stale"] == ["nope", "1.x", "99.99"]


def test_ready_count_and_depths(b: Broker) -> None:
    b.create("q", visibility_timeout_s=1)
    b.publish("q", "a", "b")
    assert b.state.ready_count("q", b.now_ms) == 2
    b.receive("q", 2)
    assert b.state.ready_count("q", b.now_ms) == 0
    # a lease is due: a long poll should propose a receive
    assert b.state.ready_count("q", T0 + 1_000) >= 1
    assert b.state.queue_depths() == {"q": {"ready": 0, "in_flight": 2, "delayed": 0}}


def test_oldest_ready_age(b: Broker) -> None:
    b.create("q")
    b.publish("q", "a")
    b.at(1_500).publish("q", "b")
    assert b.at(4_000).stats()["oldest_ready_age_s"] == 4.0
    b.receive("q", 1)
    assert b.stats()["oldest_ready_age_s"] == 2.5


def test_command_time_never_goes_backwards(b: Broker) -> None:
    b.create("q", visibility_timeout_s=5)
    b.publish("q", "x")
    b.at(10_000).ok(op="tick")
    m = b.at(0).receive("q")[0]  # an entry proposed with an older clock
    assert m["lease_expires_at"] == T0 + 15_000
    assert b.state.now_ms == T0 + 10_000
