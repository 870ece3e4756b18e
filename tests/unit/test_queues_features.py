"""Issue 3 queue features at the state level: priorities, groups, delays, TTL, limits and
overflow, dead letters and redrive, dedup ids, queue expiry, and their interactions."""

from __future__ import annotations

import pytest

from storage.state import BrokerState
from tests.unit.test_queues import Broker


@pytest.fixture
def b() -> Broker:
    return Broker()


# ----- priorities

def test_higher_priority_first_fifo_within_priority(b: Broker) -> None:
    b.create("q")
    b.publish_msgs("q", [{"body": "low1", "priority": 0}, {"body": "high1", "priority": 9},
                         {"body": "mid", "priority": 5}, {"body": "high2", "priority": 9},
                         {"body": "low2"}])
    assert b.bodies("q") == [b"high1", b"high2", b"mid", b"low1", b"low2"]


def test_priority_out_of_range_is_invalid(b: Broker) -> None:
    b.create("q")
    err = b.err("invalid_request", op="queue.publish", queue="q",
                messages=[{"body": "x", "priority": 10}])
    assert "messages[0].priority" in err["message"]
    b.err("invalid_request", op="queue.publish", queue="q",
          messages=[{"body": "x", "priority": True}])
    assert b.stats()["published_total"] == 0


# ----- groups

def test_group_one_in_flight_in_publish_order_others_parallel(b: Broker) -> None:
    b.create("q")
    b.publish_msgs("q", [{"body": "a1", "group": "A"}, {"body": "a2", "group": "A"},
                         {"body": "b1", "group": "B"}, {"body": "a3", "group": "A"},
                         {"body": "b2", "group": "B"}, {"body": "free"}])
    first = b.receive("q", 10)
    assert [m["body"] for m in first] == [b"a1", b"b1", b"free"]
    s = b.stats()
    assert s["groups_busy"] == 2 and s["groups_blocked"] == 2
    assert b.receive("q") == []
    b.ack("q", first[0]["receipt"])  # a1 done: a2 becomes ready
    second = b.receive("q")
    assert [m["body"] for m in second] == [b"a2"]
    b.ack("q", second[0]["receipt"], first[1]["receipt"])
    assert b.bodies("q") == [b"a3", b"b2"]  # enqueue order across groups


def test_group_member_redelivered_keeps_group_blocked(b: Broker) -> None:
    b.create("q", visibility_timeout_s=5)
    b.publish("q", "g1", "g2", group="G")
    m = b.receive("q")[0]
    b.ok(op="queue.nack", queue="q", receipts=[m["receipt"]], delay_s=10)
    assert b.at(5_000).receive("q") == []  # g2 must wait for g1
    again = b.at(10_000).receive("q")
    assert [x["body"] for x in again] == [b"g1"]
    b.ack("q", again[0]["receipt"])
    assert b.bodies("q") == [b"g2"]


def test_priority_with_groups(b: Broker) -> None:
    """Within a group publish order wins; across groups and ungrouped, priority does."""
    b.create("q")
    b.publish_msgs("q", [{"body": "a-low", "group": "A", "priority": 1},
                         {"body": "a-high", "group": "A", "priority": 9},
                         {"body": "free-mid", "priority": 5}])
    first = b.receive("q", 10)
    assert [m["body"] for m in first] == [b"free-mid", b"a-low"]
    b.ack("q", *[m["receipt"] for m in first])
    assert b.bodies("q") == [b"a-high"]


def test_poison_message_of_group_goes_to_dlq_and_unblocks_group(b: Broker) -> None:
    b.create("q", max_receives=2, visibility_timeout_s=1, dead_letter_queue="dlq")
    b.publish("q", "poison", "next", group="G")
    for i in range(2):
        got = b.at(i * 1_000).receive("q")
        assert [m["body"] for m in got] == [b"poison"]
    got = b.at(2_000).receive("q")
    assert [m["body"] for m in got] == [b"next"]
    dead = b.receive("dlq")
    assert [m["body"] for m in dead] == [b"poison"]
    h = dead[0]["headers"]
    assert h["x-dead-letter-reason"] == "max_receives"
    assert h["x-original-queue"] == "q" and h["x-receive-count"] == "2"
    assert b.stats("q")["dead_lettered_total"] == 1


# ----- delays

def test_queue_and_message_delays(b: Broker) -> None:
    b.create("q", delay_s=5)
    b.publish("q", "default")
    b.publish_msgs("q", [{"body": "long", "delay_s": 30}, {"body": "short", "delay_s": 1}])
    assert b.stats()["delayed"] == 3 and b.receive("q") == []
    assert b.at(1_000).bodies("q") == [b"short"]
    assert b.at(5_000).bodies("q") == [b"default"]
    assert b.at(29_999).receive("q") == []
    assert b.at(30_000).bodies("q") == [b"long"]


def test_long_delay_has_no_15_minute_cap(b: Broker) -> None:
    b.create("q")
    b.publish_msgs("q", [{"body": "x", "delay_s": 3 * 24 * 3600}])
    assert b.at(3 * 24 * 3600 * 1000 - 1).receive("q") == []
    assert b.at(3 * 24 * 3600 * 1000).bodies("q") == [b"x"]


def test_delay_with_ttl_expires_before_ready(b: Broker) -> None:
    b.create("q", dead_letter_queue="dlq")
    b.publish_msgs("q", [{"body": "late", "delay_s": 10, "ttl_s": 5},
                         {"body": "ok", "delay_s": 2, "ttl_s": 5}])
    assert b.at(2_000).bodies("q") == [b"ok"]
    assert b.at(10_000).receive("q") == []
    dead = b.receive("dlq")
    assert [(m["body"], m["headers"]["x-dead-letter-reason"]) for m in dead] == \
        [(b"late", "ttl_expired")]


# ----- TTL

def test_queue_ttl_and_message_ttl(b: Broker) -> None:
    b.create("q", message_ttl_s=10)
    b.publish("q", "queue-ttl")
    b.publish_msgs("q", [{"body": "own-ttl", "ttl_s": 3}])
    assert b.at(3_000).stats()["ready"] == 2  # timers fire on the next command
    b.ok(op="tick")
    assert b.stats()["ready"] == 1 and b.stats()["expired_total"] == 1
    b.at(10_000).ok(op="tick")  # time reaches apply through the leader's ticks
    assert b.receive("q") == []


def test_in_flight_message_expires_when_its_lease_ends(b: Broker) -> None:
    b.create("q", message_ttl_s=5, visibility_timeout_s=10, dead_letter_queue="dlq")
    b.publish("q", "x")
    m = b.receive("q")[0]
    b.at(6_000).ok(op="tick")
    assert b.stats()["in_flight"] == 1  # a consumer is working on it: not taken away
    assert b.ack("q", m["receipt"])["acked"] == 1
    b.publish("q", "y")
    b.at(6_000).receive("q")
    b.at(16_000).ok(op="tick")
    assert b.stats()["in_flight"] == 0
    assert [d["headers"]["x-dead-letter-reason"] for d in b.receive("dlq")] == ["ttl_expired"]


def test_expired_without_dlq_is_dropped(b: Broker) -> None:
    b.create("q", message_ttl_s=1)
    b.publish("q", "x")
    assert b.at(1_000).receive("q") == []
    assert [q["name"] for q in b.state.list_queues(b.now_ms)] == ["q"]


# ----- overflow

def test_drop_oldest_drops_to_dlq_with_reason_overflow(b: Broker) -> None:
    b.create("q", max_length=2, overflow="drop_oldest", dead_letter_queue="dlq")
    b.publish("q", "1", "2")
    b.publish("q", "3")
    assert b.stats()["ready"] == 2
    assert b.bodies("q") == [b"2", b"3"]
    dead = b.receive("dlq")
    assert [(m["body"], m["headers"]["x-dead-letter-reason"]) for m in dead] == \
        [(b"1", "overflow")]


def test_drop_oldest_drops_oldest_whatever_its_priority(b: Broker) -> None:
    b.create("q", max_length=2, overflow="drop_oldest")
    b.publish_msgs("q", [{"body": "old-high", "priority": 9}, {"body": "new-low"}])
    b.publish("q", "newest")
    assert b.bodies("q") == [b"new-low", b"newest"]


def test_drop_oldest_cannot_drop_in_flight_so_rejects(b: Broker) -> None:
    b.create("q", max_length=2, overflow="drop_oldest")
    b.publish("q", "1", "2")
    b.receive("q", 2)
    b.err("queue_full", op="queue.publish", queue="q", messages=[{"body": "3"}])


def test_drop_oldest_by_bytes(b: Broker) -> None:
    b.create("q", max_bytes=6, overflow="drop_oldest")
    b.publish("q", "aaa", "bbb")
    b.publish("q", "cccc")
    assert b.bodies("q") == [b"cccc"]


def test_full_dlq_drops_instead_of_failing(b: Broker) -> None:
    b.create("dlq", max_length=1)
    b.create("q", message_ttl_s=1, dead_letter_queue="dlq")
    b.publish("q", "a", "b")
    b.at(1_000).ok(op="tick")
    assert b.stats("dlq")["ready"] == 1 and b.stats("q")["dead_letter_dropped_total"] == 1


# ----- dead letters and redrive

def test_dlq_is_created_when_missing(b: Broker) -> None:
    b.create("q", dead_letter_queue="dead")
    assert [q["name"] for q in b.state.list_queues(b.now_ms)] == ["dead", "q"]
    b.ok(op="queue.delete", queue="dead")
    b.create("q2", max_receives=1, visibility_timeout_s=1, dead_letter_queue="dead")
    b.publish("q2", "x")
    b.receive("q2")
    b.at(1_000).ok(op="tick")  # dead-lettering re-creates it
    assert b.bodies("dead") == [b"x"]


def test_queue_cannot_be_its_own_dlq(b: Broker) -> None:
    b.err("invalid_request", op="queue.create", queue="q", config={"dead_letter_queue": "q"})


def test_nack_beyond_max_receives_dead_letters(b: Broker) -> None:
    b.create("q", max_receives=1, dead_letter_queue="dlq")
    b.publish("q", "x")
    m = b.receive("q")[0]
    b.ok(op="queue.nack", queue="q", receipts=[m["receipt"]])
    assert b.receive("q") == [] and b.bodies("dlq") == [b"x"]


def test_a_message_moved_in_keeps_its_place_behind_newer_ones_across_a_snapshot(
        b: Broker) -> None:
    """A dead-lettered message is older than what its dead-letter queue already holds: it
    goes to the back (its position is not its id: Queue.moved_pos), a nack returns it to
    that place, and a snapshot round trip keeps the order."""
    b.create("q", max_receives=1, dead_letter_queue="dlq")
    b.create("dlq")
    b.publish("q", "old")
    b.publish("dlq", "newer")
    m = b.receive("q")[0]
    b.ok(op="queue.nack", queue="q", receipts=[m["receipt"]])  # dead-lettered behind "newer"
    b.publish("dlq", "newest")
    dlq = b.state.queues.queues["dlq"]
    assert list(dlq.moved_pos) == [int(m["id"])]
    restored = BrokerState.decode_snapshot(b.state.encode_snapshot())
    assert restored.queues.queues["dlq"].moved_pos == dlq.moved_pos
    b.state = restored
    got = b.receive("dlq", 2)
    assert [x["body"] for x in got] == [b"newer", b"old"]
    b.ok(op="queue.nack", queue="dlq", receipts=[got[1]["receipt"]])  # back to its place
    again = b.receive("dlq", 10)
    assert [x["body"] for x in again] == [b"old", b"newest"]
    b.ok(op="queue.ack", queue="dlq", receipts=[x["receipt"] for x in again])
    assert not b.state.queues.queues["dlq"].moved_pos  # gone with the message


def test_a_queue_from_an_older_snapshot_whose_positions_ran_ahead_of_the_ids_takes_more(
        b: Broker) -> None:
    """Before positions came from the id counter, each message moved in advanced its queue's
    next position by one while the ids stayed put, so a snapshot can hold a queue whose next
    position is above the next id. Restored, it takes new messages and moved-in ones, in
    order, instead of failing the publish."""
    b.create("q", max_receives=1, dead_letter_queue="dlq")
    b.create("dlq")
    b.publish("dlq", "first")
    dlq = b.state.queues.queues["dlq"]
    dlq.next_pos = b.state.queues.next_msg_id + 5  # as three moves in a row left it before
    b.state = BrokerState.decode_snapshot(b.state.encode_snapshot())
    b.publish("dlq", "published")
    b.publish("q", "dead")
    m = b.receive("q")[0]
    b.ok(op="queue.nack", queue="q", receipts=[m["receipt"]])  # moves in behind "published"
    b.publish("dlq", "last")
    assert b.bodies("dlq", 10) == [b"first", b"published", b"dead", b"last"]


def test_redrive_moves_ready_messages_up_to_max(b: Broker) -> None:
    b.create("q", max_receives=1, visibility_timeout_s=1, dead_letter_queue="dlq")
    b.publish("q", "a", "b", "c")
    b.receive("q", 3)
    b.at(1_000).ok(op="tick")
    assert b.stats("dlq")["ready"] == 3
    assert b.ok(op="queue.redrive", queue="dlq", to="q", max_messages=2) == {"moved": 2}
    got = b.receive("q", 10)
    assert [m["body"] for m in got] == [b"a", b"b"]
    assert all(m["receive_count"] == 1 for m in got)  # a fresh start in the target
    b.err("queue_not_found", op="queue.redrive", queue="dlq", to="missing", max_messages=1)
    b.err("invalid_request", op="queue.redrive", queue="dlq", to="dlq", max_messages=1)


def test_purge_after_a_redrive_forgets_the_moved_messages_places(b: Broker) -> None:
    """Found by test_state_props: purge kept the positions of redriven messages, so a node's
    state differed from the same state restored from its snapshot (and grew with each)."""
    b.create("dlq")
    b.create("q")
    b.publish("dlq", "old")
    b.publish("q", "newer")
    assert b.ok(op="queue.redrive", queue="dlq", to="q", max_messages=10) == {"moved": 1}
    assert b.state.queues.queues["q"].moved_pos  # "old" went to the back of q
    assert b.ok(op="queue.purge", queue="q") == {"purged": 2}
    assert b.state.queues.queues["q"].moved_pos == {}


def test_redrive_of_a_message_with_a_group(b: Broker) -> None:
    b.create("dlq")
    b.create("q")
    b.publish("dlq", "g1", "g2", group="G")
    b.publish("q", "q-g0", group="G")
    held = b.receive("q")[0]  # G is busy in q
    assert b.ok(op="queue.redrive", queue="dlq", to="q", max_messages=10) == {"moved": 2}
    assert b.receive("q") == []  # still one of G in flight
    b.ack("q", held["receipt"])
    m1 = b.receive("q")
    assert [m["body"] for m in m1] == [b"g1"] and m1[0]["group"] == "G"
    b.ack("q", m1[0]["receipt"])
    assert b.bodies("q") == [b"g2"]


def test_redrive_stops_when_target_is_full(b: Broker) -> None:
    b.create("dlq")
    b.create("q", max_length=1)
    b.publish("dlq", "a", "b")
    assert b.ok(op="queue.redrive", queue="dlq", to="q", max_messages=10) == {"moved": 1}
    assert b.bodies("dlq") == [b"b"] and b.bodies("q") == [b"a"]


# ----- dedup

def test_dedup_within_window_answers_original_id(b: Broker) -> None:
    b.create("q", dedup_window_s=60)
    first = b.publish_msgs("q", [{"body": "x", "dedup_id": "order-1"}])["messages"][0]
    again = b.at(59_999).publish_msgs("q", [{"body": "x", "dedup_id": "order-1"}])
    assert again["messages"] == [{"id": first["id"], "duplicate": True}]
    assert b.stats()["published_total"] == 1
    m = b.receive("q")[0]
    b.ack("q", m["receipt"])
    # still a duplicate after the original was consumed, within the window
    assert b.publish_msgs("q", [{"body": "x", "dedup_id": "order-1"}])["messages"][0][
        "duplicate"] is True
    later = b.at(60_000).publish_msgs("q", [{"body": "x", "dedup_id": "order-1"}])
    assert later["messages"][0]["duplicate"] is False
    assert later["messages"][0]["id"] != first["id"]


def test_dedup_within_one_batch(b: Broker) -> None:
    b.create("q")
    out = b.publish_msgs("q", [{"body": "a", "dedup_id": "d"}, {"body": "b", "dedup_id": "d"},
                               {"body": "c"}])["messages"]
    assert out[1] == {"id": out[0]["id"], "duplicate": True}
    assert b.bodies("q") == [b"a", b"c"]


def test_duplicates_do_not_count_against_max_length(b: Broker) -> None:
    b.create("q", max_length=1)
    b.publish_msgs("q", [{"body": "a", "dedup_id": "d"}])
    out = b.publish_msgs("q", [{"body": "a", "dedup_id": "d"}])
    assert out["messages"][0]["duplicate"] is True


# ----- queue expiry

def test_queue_expires_without_consumer_activity(b: Broker) -> None:
    b.create("q", expires_s=60)
    b.publish("q", "x")
    b.at(30_000).receive("q")  # consumer activity pushes expiry to 90 s
    b.at(80_000).publish("q", "y")  # publishing is not consumer activity
    b.at(89_999).ok(op="tick")
    assert b.state.queue_info("q", b.now_ms).get("name") == "q"
    b.at(90_000).ok(op="tick")
    assert b.state.queue_info("q", b.now_ms)["error"]["code"] == "queue_not_found"


def test_deleted_queue_loses_its_bindings(b: Broker) -> None:
    b.create("q")
    b.ok(op="topic.create", topic="t", config={"partitions": 1})
    b.ok(op="binding.create", queue="q", topic="t")
    assert len(b.state.queue_info("q", b.now_ms)["bindings"]) == 1
    b.ok(op="queue.delete", queue="q")
    b.create("q")
    assert b.state.queue_info("q", b.now_ms)["bindings"] == []
    b.ok(op="topic.publish", topic="t", messages=[{"body": b"x", "headers": {}, "key": None}])
    assert b.receive("q") == []


def test_binding_to_missing_queue_is_queue_not_found(b: Broker) -> None:
    b.ok(op="topic.create", topic="t", config={"partitions": 1})
    b.err("queue_not_found", op="binding.create", queue="nope", topic="t")


def test_topic_publish_routes_all_or_nothing(b: Broker) -> None:
    b.create("roomy")
    b.create("full", max_length=1)
    b.publish("full", "occupied")
    b.ok(op="topic.create", topic="t", config={"partitions": 1})
    b.ok(op="binding.create", queue="roomy", topic="t")
    b.ok(op="binding.create", queue="full", topic="t")
    b.err("queue_full", op="topic.publish", topic="t",
          messages=[{"body": b"x", "headers": {}, "key": None}])
    assert b.stats("roomy")["published_total"] == 0
    info = b.state.topics.topic_info("t")
    assert info["partitions"][0]["high_watermark"] == 0
    b.ok(op="queue.purge", queue="full")
    b.ok(op="topic.publish", topic="t", messages=[{"body": b"x", "headers": {}, "key": None}])
    assert b.bodies("roomy") == [b"x"] and b.bodies("full") == [b"x"]


# ----- push subscriptions (replicated; the leader's node delivers)

def test_push_subscription_is_state_and_goes_with_the_queue(b: Broker) -> None:
    b.create("q")
    b.err("queue_not_found", op="queue.push_set", queue="nope", url="http://x/", max_in_flight=1)
    b.err("invalid_request", op="queue.push_set", queue="q", url="ftp://x", max_in_flight=1)
    b.err("invalid_request", op="queue.push_set", queue="q", url="http://x/", max_in_flight=0)
    r = b.ok(op="queue.push_set", queue="q", url="http://127.0.0.1:9/hook", max_in_flight=4)
    assert r == {"push": {"queue": "q", "url": "http://127.0.0.1:9/hook", "max_in_flight": 4}}
    assert b.state.push_subscriptions() == {"q": {"url": "http://127.0.0.1:9/hook",
                                                  "max_in_flight": 4}}
    restored = type(b.state).decode_snapshot(b.state.encode_snapshot())
    assert restored.push_subscriptions() == b.state.push_subscriptions()
    assert b.ok(op="queue.push_delete", queue="q") == {"deleted": True}
    assert b.state.push_subscriptions() == {}
    b.ok(op="queue.push_set", queue="q", url="http://h/", max_in_flight=1)
    b.ok(op="queue.delete", queue="q")
    assert b.state.push_subscriptions() == {}


# ----- bounded bookkeeping

def test_acked_messages_do_not_grow_timer_heaps(b: Broker) -> None:
    b.create("q", message_ttl_s=86_400, visibility_timeout_s=3_600)
    for _ in range(30):
        b.publish_msgs("q", [{"body": "x"}] * 200)
        b.ack("q", *[m["receipt"] for m in b.receive("q", 200)])
    q = b.state.queues.queues["q"]
    assert b.stats()["acked_total"] == 6_000
    slack = q.COMPACT_SLACK
    assert len(q.ttls) <= slack + 200 and len(q.leases) <= slack + 200


def test_peek_shows_ready_messages_in_delivery_order_and_changes_nothing(b: Broker) -> None:
    b.create("q")
    b.publish_msgs("q", [{"body": "low"}, {"body": "high", "priority": 7}, {"body": "low2"}])
    m = b.receive("q", 1)[0]
    assert m["body"] == b"high"
    before = b.state.encode_snapshot()
    peeked = b.state.peek("q", 10)["messages"]
    assert [p["body"] for p in peeked] == [b"low", b"low2"]
    assert [p["body"] for p in b.state.peek("q", 1)["messages"]] == [b"low"]
    assert b.state.encode_snapshot() == before
    assert b.state.peek("nope", 1)["error"]["code"] == "queue_not_found"


def test_queue_groups_shows_busy_and_waiting(b: Broker) -> None:
    b.create("q")
    b.publish("q", "a1", "a2", group="A")
    b.publish("q", "b1", group="B")
    b.receive("q", 1)
    assert b.state.queue_groups("q")["groups"] == [
        {"group": "A", "state": "busy", "waiting": 1},
        {"group": "B", "state": "ready", "waiting": 0}]


def test_dedup_ids_are_bounded_per_queue() -> None:
    from storage.limits import Limits
    from storage.state import BrokerState

    b = Broker()
    b.state = BrokerState(Limits(dedup_ids_max=2))
    b.create("q")
    first = b.publish_msgs("q", [{"body": "1", "dedup_id": "a"}, {"body": "2", "dedup_id": "b"},
                                 {"body": "3", "dedup_id": "c"}])["messages"]
    assert len(b.state.queues.queues["q"].dedup) == 2
    again = b.publish_msgs("q", [{"body": "3", "dedup_id": "c"}, {"body": "1", "dedup_id": "a"}])
    assert again["messages"][0] == {"id": first[2]["id"], "duplicate": True}
    assert again["messages"][1]["duplicate"] is False  # "a" was forgotten: oldest first
