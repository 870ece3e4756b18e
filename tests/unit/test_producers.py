"""Exactly-once producers and transactions at the state level (API.md "Exactly-once")."""

from __future__ import annotations

from typing import Any

import pytest

from storage.limits import Limits
from storage.state import BrokerState
from tests.unit.test_queues import T0, Broker


@pytest.fixture
def b() -> Broker:
    br = Broker()
    br.create("q")
    return br


def pub(b: Broker, pid: str, epoch: int, seq: int, *bodies: str) -> dict[str, Any]:
    return b.raw(op="queue.publish", queue="q", messages=[{"body": x} for x in bodies],
                 producer={"id": pid, "epoch": epoch, "seq": seq})


def test_register_generates_ids_and_bumps_epochs(b: Broker) -> None:
    assert b.ok(op="producer.register") == {"id": "p-1", "epoch": 1}
    assert b.ok(op="producer.register") == {"id": "p-2", "epoch": 1}
    assert b.ok(op="producer.register", id="mine") == {"id": "mine", "epoch": 1}
    assert b.ok(op="producer.register", id="mine") == {"id": "mine", "epoch": 2}


def test_next_seq_applies_and_duplicate_returns_original_answer(b: Broker) -> None:
    b.ok(op="producer.register", id="p")
    first = pub(b, "p", 1, 0, "a", "b")
    assert first["duplicate"] is False
    again = pub(b, "p", 1, 0, "a", "b")
    assert again["duplicate"] is True
    assert [m["id"] for m in again["messages"]] == [m["id"] for m in first["messages"]]
    assert b.stats()["published_total"] == 2
    pub(b, "p", 1, 1, "c")
    assert b.bodies("q") == [b"a", b"b", b"c"]


def test_gap_is_out_of_order_naming_expected_seq(b: Broker) -> None:
    b.ok(op="producer.register", id="p")
    pub(b, "p", 1, 0, "a")
    err = pub(b, "p", 1, 5, "x")["error"]
    assert err["code"] == "out_of_order_sequence" and err["expected_seq"] == 1
    assert "expected 1" in err["message"]
    assert b.stats()["published_total"] == 1


def test_failed_command_does_not_consume_seq(b: Broker) -> None:
    b.create("small", max_length=1)
    b.ok(op="producer.register", id="p")
    cmd = {"op": "queue.publish", "queue": "small", "messages": [{"body": "x"}, {"body": "y"}],
           "producer": {"id": "p", "epoch": 1, "seq": 0}}
    assert b.raw(**cmd)["error"]["code"] == "queue_full"
    cmd["messages"] = [{"body": "x"}]
    assert "error" not in b.raw(**cmd)


def test_older_epoch_is_fenced_and_unknown_producer(b: Broker) -> None:
    b.ok(op="producer.register", id="p")
    pub(b, "p", 1, 0, "a")
    b.ok(op="producer.register", id="p")
    assert pub(b, "p", 1, 1, "zombie")["error"]["code"] == "producer_fenced"
    assert pub(b, "p", 1, 0, "zombie-retry")["error"]["code"] == "producer_fenced"
    assert "error" not in pub(b, "p", 2, 0, "fresh")  # a new epoch starts at seq 0
    assert pub(b, "p", 3, 0, "x")["error"]["code"] == "producer_unknown"
    err = pub(b, "ghost", 1, 0, "x")["error"]
    assert err["code"] == "producer_unknown" and "register" in err["message"]


def test_duplicate_window_is_bounded() -> None:
    b = Broker()
    b.state = BrokerState(Limits(producer_seq_window=3))
    b.create("q")
    b.ok(op="producer.register", id="p")
    for seq in range(5):
        pub(b, "p", 1, seq, f"m{seq}")
    assert pub(b, "p", 1, 2, "m2")["duplicate"] is True
    assert pub(b, "p", 1, 1, "m1")["error"]["code"] == "out_of_order_sequence"


def test_idle_producers_expire_on_command_time() -> None:
    b = Broker()
    b.state = BrokerState(Limits(producer_idle_expiry_s=100))
    b.create("q")
    b.ok(op="producer.register", id="idle")
    b.ok(op="producer.register", id="busy")
    b.at(60_000)
    pub(b, "busy", 1, 0, "x")
    b.at(100_000).ok(op="tick")
    assert pub(b, "idle", 1, 0, "x")["error"]["code"] == "producer_unknown"
    assert "error" not in pub(b, "busy", 1, 1, "y")


def test_oldest_idle_producer_is_evicted_at_the_maximum() -> None:
    b = Broker()
    b.state = BrokerState(Limits(producers_max=2))
    b.create("q")
    b.ok(op="producer.register", id="a")
    b.ok(op="producer.register", id="b")
    pub(b, "a", 1, 0, "x")  # a is now the most recently used
    b.ok(op="producer.register", id="c")
    assert pub(b, "b", 1, 0, "x")["error"]["code"] == "producer_unknown"
    assert "error" not in pub(b, "a", 1, 1, "y")
    assert len(b.state.producers) == 2


def test_same_results_after_snapshot_and_restore(b: Broker) -> None:
    b.ok(op="producer.register", id="p")
    first = pub(b, "p", 1, 0, "a")
    restored = BrokerState.decode_snapshot(b.state.encode_snapshot())
    for state in (b.state, restored):
        dup = state.apply({"op": "queue.publish", "queue": "q", "messages": [{"body": "a"}],
                           "producer": {"id": "p", "epoch": 1, "seq": 0}}, T0)
        assert dup["duplicate"] is True and dup["messages"][0]["id"] == first["messages"][0]["id"]
        gap = state.apply({"op": "queue.publish", "queue": "q", "messages": [{"body": "a"}],
                           "producer": {"id": "p", "epoch": 1, "seq": 9}}, T0)
        assert gap["error"]["expected_seq"] == 1
    assert restored.encode_snapshot() == b.state.encode_snapshot()


def test_topic_publish_with_producer_is_idempotent(b: Broker) -> None:
    b.ok(op="producer.register", id="p")
    b.ok(op="topic.create", topic="t", config={"partitions": 1})
    cmd = {"op": "topic.publish", "topic": "t",
           "messages": [{"body": b"x", "headers": {}, "key": None}],
           "producer": {"id": "p", "epoch": 1, "seq": 0}}
    first = b.ok(**cmd)
    again = b.ok(**cmd)
    assert again["duplicate"] is True and again["messages"][0]["offset"] == \
        first["messages"][0]["offset"]
    assert b.state.topics.topic_info("t")["partitions"][0]["high_watermark"] == 1


# ----- transactions

def received(b: Broker, queue: str, n: int = 10) -> list[str]:
    return [m["receipt"] for m in b.receive(queue, n)]


def test_txn_acks_and_publishes_atomically(b: Broker) -> None:
    b.create("out")
    b.ok(op="topic.create", topic="t", config={"partitions": 1})
    b.publish("q", "in1", "in2")
    receipts = received(b, "q")
    r = b.ok(op="txn", ack=[{"queue": "q", "receipts": receipts}],
             publish=[{"queue": "out", "messages": [{"body": "o1"}, {"body": "o2"}]},
                      {"topic": "t", "messages": [{"body": b"t1", "headers": {}, "key": None}]},
                      {"queue": "out", "messages": [{"body": "o3"}]}])
    assert r["acked"] == 2 and r["duplicate"] is False
    assert [len(p["messages"]) for p in r["publish"]] == [2, 1, 1]
    assert r["publish"][1]["messages"][0]["offset"] == 0
    assert b.stats("q")["in_flight"] == 0
    assert b.bodies("out") == [b"o1", b"o2", b"o3"]


def test_txn_with_a_stale_receipt_changes_nothing(b: Broker) -> None:
    b.create("out")
    b.publish("q", "a", "b")
    good, old = received(b, "q", 2)
    b.ack("q", old)
    err = b.err("stale_receipt", op="txn", ack=[{"queue": "q", "receipts": [good, old]}],
                publish=[{"queue": "out", "messages": [{"body": "o"}]}])
    assert err["stale"] == [old]
    assert b.stats("q")["in_flight"] == 1 and b.stats("out")["published_total"] == 0
    # the same receipt twice in one transaction is stale the second time
    b.err("stale_receipt", op="txn", ack=[{"queue": "q", "receipts": [good, good]}])
    assert b.stats("q")["in_flight"] == 1


def test_txn_full_target_changes_nothing(b: Broker) -> None:
    b.create("out", max_length=1)
    b.publish("q", "a")
    receipt = received(b, "q")[0]
    b.err("queue_full", op="txn", ack=[{"queue": "q", "receipts": [receipt]}],
          publish=[{"queue": "out", "messages": [{"body": "1"}, {"body": "2"}]}])
    assert b.stats("q")["in_flight"] == 1
    b.err("queue_not_found", op="txn", ack=[{"queue": "q", "receipts": [receipt]}],
          publish=[{"queue": "nope", "messages": [{"body": "1"}]}])
    b.err("topic_not_found", op="txn", ack=[{"queue": "q", "receipts": [receipt]}],
          publish=[{"topic": "nope", "messages": [{"body": b"1", "headers": {}}]}])
    assert b.ack("q", receipt)["acked"] == 1


def test_txn_with_producer_is_idempotent(b: Broker) -> None:
    b.create("out")
    b.ok(op="producer.register", id="p")
    b.publish("q", "a")
    receipt = received(b, "q")[0]
    cmd = {"op": "txn", "ack": [{"queue": "q", "receipts": [receipt]}],
           "publish": [{"queue": "out", "messages": [{"body": "o"}]}],
           "producer": {"id": "p", "epoch": 1, "seq": 0}}
    first = b.ok(**cmd)
    again = b.ok(**cmd)  # the receipt is gone now, but the seq was applied: same answer
    assert again["duplicate"] is True and again["acked"] == first["acked"] == 1
    assert b.stats("out")["published_total"] == 1


def test_stored_results_are_packed_and_unpack_exactly() -> None:
    from storage.producers import pack_result, unpack_result

    queue = {"messages": [{"id": str(i), "duplicate": False} for i in range(7, 1007)],
             "duplicate": False}
    packed = pack_result(queue)
    assert packed["messages"] == {"range": [7, 1000]}
    mixed = {"messages": [{"id": "5", "duplicate": True}, {"id": "9", "duplicate": False}],
             "duplicate": False}
    topic = {"messages": [{"partition": 1, "offset": 4, "duplicate": False},
                          {"partition": 0, "offset": 9, "duplicate": False}],
             "duplicate": False}
    txn = {"acked": 1, "publish": [{"queue": "q", "messages": queue["messages"][:2]},
                                   {"topic": "t", "messages": topic["messages"]}],
           "duplicate": False}
    odd = {"messages": [{"id": "007", "duplicate": False}], "duplicate": False}
    for result in (queue, mixed, topic, txn, odd, {"id": "p", "epoch": 1}, {}):
        assert unpack_result(pack_result(result)) == result


def test_an_expired_producer_id_registered_again_fences_its_zombie() -> None:
    """A zombie of an expired producer must not be taken for the new producer's seq 0."""
    from storage.limits import Limits
    from storage.state import BrokerState

    state = BrokerState(Limits(producer_idle_expiry_s=10))
    state.apply({"op": "queue.create", "queue": "q", "config": {}}, 1)
    first = state.apply({"op": "producer.register", "id": "p"}, 1)
    second = state.apply({"op": "producer.register", "id": "p"}, 2)
    assert (first["epoch"], second["epoch"]) == (1, 2)
    state.apply({"op": "tick"}, 60_000)  # p expires
    again = state.apply({"op": "producer.register", "id": "p"}, 60_001)
    assert again["epoch"] > second["epoch"], "an epoch is never issued twice for one id"
    zombie = state.apply({"op": "queue.publish", "queue": "q", "messages": [{"body": "z"}],
                          "producer": {"id": "p", "epoch": 2, "seq": 0}}, 60_002)
    assert zombie["error"]["code"] == "producer_fenced"
    restored = BrokerState.decode_snapshot(state.encode_snapshot(),
                                           Limits(producer_idle_expiry_s=10))
    assert restored.producers.epoch_floor == state.producers.epoch_floor


def test_the_stored_answer_shares_nothing_with_the_one_given_to_the_client(b: Broker) -> None:
    """Results are stored without a deep copy; a caller changing its answer (the node adds
    fields, a client library mutates) must not change what a retry is answered."""
    b.ok(op="producer.register", id="p")
    first = pub(b, "p", 1, 0, "a", "b")
    want = [(m["id"], True) for m in first["messages"]]
    first["messages"][0]["id"] = "changed"
    first["messages"].ids[1:] = [999, 1000]  # its one mutable part (storage/answers.py)
    first["extra"] = 1
    txn = b.ok(op="txn", publish=[{"queue": "q", "messages": [{"body": "t"}]}],
               producer={"id": "p", "epoch": 1, "seq": 1})
    txn_ids = [m["id"] for m in txn["publish"][0]["messages"]]
    txn["publish"][0]["messages"].clear()
    txn["publish"][0]["queue"] = "other"
    again = pub(b, "p", 1, 0, "a", "b")
    assert [(m["id"], m["duplicate"]) for m in again["messages"]] == want
    assert "extra" not in again
    txn_again = b.ok(op="txn", publish=[{"queue": "q", "messages": [{"body": "t"}]}],
                     producer={"id": "p", "epoch": 1, "seq": 1})
    assert txn_again["publish"][0]["queue"] == "q"
    assert [m["id"] for m in txn_again["publish"][0]["messages"]] == txn_ids
