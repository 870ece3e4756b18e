"""Topics: partitions, offsets, retention on command time, reads, group offsets, routing."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
import pytest

from storage.errors import BrokerError
from storage.limits import Limits
from storage.topics import (
    TopicLimits,
    Topics,
    partition_for_key,
    validate_topic_config,
    validate_topic_messages,
)

T0 = 1_700_000_000_000


def ok(t: Topics, cmd: dict[str, Any], now_ms: int = T0) -> dict[str, Any]:
    result, _ = t.apply(cmd, now_ms)
    assert "error" not in result, result
    return result


def err(t: Topics, cmd: dict[str, Any], now_ms: int = T0) -> str:
    result, routes = t.apply(cmd, now_ms)
    assert "error" in result and routes == [], result
    code: str = result["error"]["code"]
    return code


def create(t: Topics, name: str = "t", now_ms: int = T0, **config: Any) -> None:
    ok(t, {"op": "topic.create", "topic": name, "config": config}, now_ms)


def publish(
    t: Topics, msgs: list[dict[str, Any]], name: str = "t", now_ms: int = T0
) -> list[tuple[int, int]]:
    result = ok(t, {"op": "topic.publish", "topic": name, "messages": msgs}, now_ms)
    return [(m["partition"], m["offset"]) for m in result["messages"]]


def bodies(t: Topics, p: int = 0, offset: int = 0, name: str = "t") -> list[bytes]:
    return [m["body"] for m in t.read(name, p, offset, 1000)["messages"]]


# ---------------------------------------------------------------- create / delete


def test_create_idempotent_same_config_conflict_otherwise() -> None:
    t = Topics()
    first = ok(t, {"op": "topic.create", "topic": "t", "config": {"partitions": 3}})
    assert first["created"] is True and first["topic"]["partitions"] == 3
    assert first["topic"]["retention"] == {"max_messages": 0, "max_bytes": 0, "max_age_s": 604800}
    again = ok(t, {"op": "topic.create", "topic": "t", "config": {"partitions": 3}})
    assert again == {**first, "created": False}
    assert err(t, {"op": "topic.create", "topic": "t", "config": {"partitions": 2}}) == (
        "already_exists"
    )


def test_delete_and_not_found() -> None:
    t = Topics()
    create(t)
    assert ok(t, {"op": "topic.delete", "topic": "t"}) == {"deleted": True}
    assert err(t, {"op": "topic.delete", "topic": "t"}) == "topic_not_found"
    assert err(t, {"op": "topic.publish", "topic": "t", "messages": [{"body": b"x"}]}) == (
        "topic_not_found"
    )
    assert t.topic_info("t")["error"]["code"] == "topic_not_found"
    assert t.read("t", 0, 0, 1)["error"]["code"] == "topic_not_found"


@pytest.mark.parametrize(
    "config",
    [
        {"partitions": 0},
        {"partitions": 65},
        {"partitions": True},
        {"partitions": "2"},
        {"retention": {"max_messages": -1}},
        {"retention": {"max_age": 5}},
        {"retention": []},
        {"durability": "disk"},
        {"replicas": 3},
    ],
)
def test_bad_config_rejected_and_nothing_created(config: dict[str, Any]) -> None:
    t = Topics()
    assert err(t, {"op": "topic.create", "topic": "t", "config": config}) == "invalid_request"
    assert t.list_topics() == []


def test_bad_names_and_ops() -> None:
    t = Topics()
    assert err(t, {"op": "topic.create", "topic": ".bad"}) == "invalid_request"
    assert err(t, {"op": "topic.create", "topic": "x" * 201}) == "invalid_request"
    assert err(t, {"op": "topic.nope", "topic": "t"}) == "invalid_request"
    assert err(t, {"topic": "t"}) == "invalid_request"


def test_topics_max() -> None:
    t = Topics(TopicLimits(topics_max=1))
    create(t, "a")
    assert err(t, {"op": "topic.create", "topic": "b"}) == "invalid_request"


def test_limits_follow_the_cluster_limits() -> None:
    lim = TopicLimits.from_limits(Limits(batch_messages_max=2, body_bytes_max=3))
    t = Topics(lim)
    create(t)
    cmd = {"op": "topic.publish", "topic": "t", "messages": [{"body": b"x"}] * 3}
    assert err(t, cmd) == "batch_too_large"
    assert err(t, {**cmd, "messages": [{"body": b"xxxx"}]}) == "message_too_large"
    assert t.read("t", 0, 0, 3)["error"]["code"] == "invalid_request"


def test_config_normalized_with_all_keys() -> None:
    cfg = validate_topic_config({"retention": {"max_bytes": 10}, "durability": "memory"})
    assert cfg == {
        "partitions": 1,
        "retention": {"max_messages": 0, "max_bytes": 10, "max_age_s": 604800},
        "durability": "memory",
    }


# ---------------------------------------------------------------- partitions and offsets


def test_key_partition_is_crc32_and_stable() -> None:
    assert partition_for_key("customer-42", 8) == zlib.crc32(b"customer-42") % 8
    t = Topics()
    create(t, partitions=8)
    placed = publish(t, [{"body": b"1", "key": "customer-42"}, {"body": b"2", "key": "k2"}])
    placed += publish(t, [{"body": b"3", "key": "customer-42"}])
    assert placed[0][0] == placed[2][0] == zlib.crc32(b"customer-42") % 8
    assert placed[2][1] == placed[0][1] + 1  # same key: same partition, in order
    assert placed[1][0] == zlib.crc32(b"k2") % 8


def test_keyless_round_robin_spreads_evenly() -> None:
    t = Topics()
    create(t, partitions=4)
    placed = publish(t, [{"body": b"x"}] * 6) + publish(t, [{"body": b"y"}] * 6)
    assert [p for p, _ in placed] == [0, 1, 2, 3] * 3
    info = t.topic_info("t")
    assert [p["high_watermark"] for p in info["partitions"]] == [3, 3, 3, 3]


def test_offsets_start_at_zero_gap_free_per_partition() -> None:
    t = Topics()
    create(t, partitions=2)
    placed = publish(t, [{"body": str(i).encode(), "key": f"k{i % 5}"} for i in range(50)])
    for p in range(2):
        offsets = [o for q, o in placed if q == p]
        assert offsets == list(range(len(offsets)))
    assert sum(p["high_watermark"] for p in t.topic_info("t")["partitions"]) == 50


def test_publish_validation_is_all_or_nothing() -> None:
    t = Topics()
    create(t)
    bad = [{"body": b"ok"}, {"headers": {}}]
    assert err(t, {"op": "topic.publish", "topic": "t", "messages": bad}) == "invalid_request"
    assert t.topic_info("t")["partitions"][0]["high_watermark"] == 0
    assert err(t, {"op": "topic.publish", "topic": "t", "messages": []}) == "invalid_request"


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"body": b"x" * 11}], "message_too_large"),
        ([{"body": b"x"}] * 3, "batch_too_large"),
        ([{"body": b"x", "key": "k" * 5}], "invalid_request"),
        ([{"body": b"x", "key": 5}], "invalid_request"),
        ([{"body": b"x", "headers": {"a": "1", "b": "2", "c": "3"}}], "invalid_request"),
        ([{"body": b"x", "priority": 1}], "invalid_request"),
        ([{"body": 5}], "invalid_request"),
        ("x", "invalid_request"),
    ],
)
def test_message_limits(messages: Any, code: str) -> None:
    lim = TopicLimits(body_bytes_max=10, messages_per_publish_max=2, key_bytes_max=4, headers_max=2)
    with pytest.raises(BrokerError) as e:
        validate_topic_messages(messages, lim)
    assert e.value.code == code


def test_str_body_becomes_bytes() -> None:
    assert validate_topic_messages([{"body": "hé"}])[0]["body"] == "hé".encode()


# ---------------------------------------------------------------- reads


def test_read_from_offset_max_and_watermarks() -> None:
    t = Topics()
    create(t)
    publish(t, [{"body": str(i).encode(), "key": "k", "headers": {"h": "v"}} for i in range(10)])
    r = t.read("t", 0, 3, 4)
    assert [m["offset"] for m in r["messages"]] == [3, 4, 5, 6]
    assert r["messages"][0] == {
        "offset": 3,
        "key": "k",
        "body": b"3",
        "headers": {"h": "v"},
        "published_at": T0,
    }
    assert (r["next_offset"], r["low_watermark"], r["high_watermark"]) == (7, 0, 10)
    assert r["truncated"] is False


def test_read_at_or_beyond_high_watermark_is_empty() -> None:
    t = Topics()
    create(t)
    publish(t, [{"body": b"a"}])
    for offset in (1, 99):
        r = t.read("t", 0, offset, 10)
        assert r["messages"] == [] and r["next_offset"] == offset and r["high_watermark"] == 1


def test_read_below_low_watermark_says_truncated() -> None:
    t = Topics()
    create(t, retention={"max_messages": 3})
    publish(t, [{"body": str(i).encode()} for i in range(10)])
    r = t.read("t", 0, 0, 100)
    assert r["truncated"] is True and r["low_watermark"] == 7
    assert [m["offset"] for m in r["messages"]] == [7, 8, 9]
    assert t.read("t", 0, 7, 100)["truncated"] is False


def test_read_from_time_binary_search() -> None:
    t = Topics()
    create(t)
    for i in range(10):
        publish(t, [{"body": str(i).encode()}], now_ms=T0 + i * 1000)
    assert [m["offset"] for m in t.read("t", 0, 0, 3, from_time_ms=T0 + 4500)["messages"]] == [
        5,
        6,
        7,
    ]
    assert t.read("t", 0, 0, 3, from_time_ms=T0 + 4000)["messages"][0]["offset"] == 4
    assert t.read("t", 0, 0, 3, from_time_ms=0)["messages"][0]["offset"] == 0
    late = t.read("t", 0, 0, 3, from_time_ms=T0 + 10_000)
    assert late["messages"] == [] and late["next_offset"] == 10


def test_read_argument_errors() -> None:
    t = Topics(TopicLimits(read_messages_max=5))
    create(t, partitions=2)
    assert t.read("t", 2, 0, 1)["error"]["code"] == "invalid_request"
    assert t.read("t", -1, 0, 1)["error"]["code"] == "invalid_request"
    assert t.read("t", 0, -1, 1)["error"]["code"] == "invalid_request"
    assert t.read("t", 0, 0, 0)["error"]["code"] == "invalid_request"
    assert "max" in t.read("t", 0, 0, 6)["error"]["message"]


def test_read_bytes_max_stops_but_returns_at_least_one() -> None:
    t = Topics(TopicLimits(read_bytes_max=25))
    create(t)
    publish(t, [{"body": b"x" * 10}] * 5)
    assert len(t.read("t", 0, 0, 100)["messages"]) == 2
    t2 = Topics(TopicLimits(read_bytes_max=5))
    create(t2)
    publish(t2, [{"body": b"x" * 10}] * 2)
    r = t2.read("t", 0, 0, 100)
    assert len(r["messages"]) == 1 and r["next_offset"] == 1


# ---------------------------------------------------------------- retention


def test_retention_max_messages_on_publish() -> None:
    t = Topics()
    create(t, retention={"max_messages": 5})
    publish(t, [{"body": str(i).encode()} for i in range(3)])
    publish(t, [{"body": str(i).encode()} for i in range(3, 8)])
    assert bodies(t) == [b"3", b"4", b"5", b"6", b"7"]
    part = t.topic_info("t")["partitions"][0]
    assert (part["low_watermark"], part["high_watermark"], part["messages"]) == (3, 8, 5)


def test_retention_max_bytes_keeps_newest() -> None:
    t = Topics()
    create(t, retention={"max_bytes": 25})
    publish(t, [{"body": b"a" * 10}, {"body": b"b" * 10}, {"body": b"c" * 10}])
    assert bodies(t) == [b"b" * 10, b"c" * 10]
    publish(t, [{"body": b"d" * 100}])  # bigger than the limit: the newest always stays
    assert bodies(t) == [b"d" * 100]
    assert t.topic_info("t")["partitions"][0]["bytes"] == 100


def test_retention_bytes_count_key_and_headers() -> None:
    t = Topics()
    create(t)
    publish(t, [{"body": b"12345", "key": "kk", "headers": {"ab": "cde"}}])
    assert t.topic_info("t")["partitions"][0]["bytes"] == 5 + 2 + 2 + 3


def test_retention_by_age_on_command_time() -> None:
    t = Topics()
    create(t, retention={"max_age_s": 10}, partitions=2)
    publish(t, [{"body": b"old", "key": "a"}], now_ms=T0)
    publish(t, [{"body": b"new", "key": "a"}], now_ms=T0 + 5_000)
    p = partition_for_key("a", 2)
    t.advance(T0 + 9_999)
    assert bodies(t, p) == [b"old", b"new"]
    t.advance(T0 + 10_000)  # exactly max_age_s old: gone
    assert bodies(t, p) == [b"new"]
    assert t.topic_info("t")["partitions"][p]["low_watermark"] == 1
    ok(
        t,
        {
            "op": "group.commit",
            "topic": "t",
            "group": "g",
            "offsets": [{"partition": p, "offset": 0}],
        },
        T0 + 15_000,
    )  # any command advances time
    assert bodies(t, p) == []
    info = t.topic_info("t")["partitions"][p]
    assert (info["low_watermark"], info["high_watermark"]) == (2, 2)
    publish(t, [{"body": b"later", "key": "a"}], now_ms=T0 + 16_000)
    assert t.read("t", p, 0, 10)["messages"][0]["offset"] == 2  # offsets never reused


def test_time_never_goes_backwards() -> None:
    t = Topics()
    create(t)
    publish(t, [{"body": b"a"}], now_ms=T0 + 1000)
    publish(t, [{"body": b"b"}], now_ms=T0)  # an older proposer clock
    times = [m["published_at"] for m in t.read("t", 0, 0, 10)["messages"]]
    assert times == [T0 + 1000, T0 + 1000]


def test_age_timers_of_a_deleted_topic_do_not_touch_a_new_one() -> None:
    t = Topics()
    create(t, retention={"max_age_s": 10})
    publish(t, [{"body": b"a"}], now_ms=T0)
    ok(t, {"op": "topic.delete", "topic": "t"}, T0 + 1)
    create(t, retention={"max_age_s": 10}, now_ms=T0 + 2)
    publish(t, [{"body": b"b"}], now_ms=T0 + 8_000)
    t.advance(T0 + 10_000)  # the old timer fires: nothing of the new topic is old enough
    assert bodies(t) == [b"b"]
    assert len(t._age_heap) == 1  # the stale timer was dropped, not rescheduled
    t.advance(T0 + 18_000)
    assert bodies(t) == []


def test_topic_churn_does_not_grow_the_age_heap() -> None:
    t = Topics()
    for i in range(3000):
        create(t, "churn", now_ms=T0 + i, retention={"max_age_s": 3600})
        publish(t, [{"body": b"x"}], "churn", T0 + i)
        ok(t, {"op": "topic.delete", "topic": "churn"}, T0 + i)
    assert len(t._age_heap) <= 1024 + 1
    create(t, "kept", retention={"max_age_s": 1}, now_ms=T0 + 5000)
    publish(t, [{"body": b"x"}], "kept", T0 + 5000)
    t.advance(T0 + 6000)
    assert bodies(t, name="kept") == []


def test_age_expiry_cost_is_per_expired_message() -> None:
    """1,000 partitions with fresh messages: advancing time touches none of them."""
    t = Topics()
    for i in range(1000):
        create(t, f"t{i}", retention={"max_age_s": 60})
        publish(t, [{"body": b"x"}], name=f"t{i}")
    t.advance(T0 + 1000)
    assert len(t._age_heap) == 1000
    assert t._age_heap[0][0] == T0 + 60_000  # the earliest due time: nothing popped early


def test_partition_log_compacts() -> None:
    t = Topics()
    create(t, retention={"max_messages": 10})
    for i in range(30):
        publish(t, [{"body": str(j).encode()} for j in range(100)], now_ms=T0 + i)
    part = t.topics["t"].partitions[0]
    assert len(part.entries) < 3000 and len(part) == 10
    assert [m["offset"] for m in t.read("t", 0, 2990, 100)["messages"]] == list(range(2990, 3000))


# ---------------------------------------------------------------- consumer groups


def test_group_commit_and_lag() -> None:
    t = Topics()
    create(t, partitions=2)
    publish(t, [{"body": b"x"}] * 10)  # 5 per partition
    assert ok(
        t,
        {
            "op": "group.commit",
            "topic": "t",
            "group": "g",
            "offsets": [{"partition": 0, "offset": 3}],
        },
    ) == {"committed": 1}
    rows = t.group_offsets("t", "g")["partitions"]
    assert rows == [
        {"partition": 0, "committed": 3, "high_watermark": 5, "lag": 2},
        {"partition": 1, "committed": None, "high_watermark": 5, "lag": 5},
    ]
    assert t.topic_info("t")["groups"] == ["g"]
    assert t.group_offsets("t", "other")["partitions"][0]["lag"] == 5
    assert t.group_offsets("nope", "g")["error"]["code"] == "topic_not_found"


def test_group_lag_counts_only_readable_messages() -> None:
    t = Topics()
    create(t, retention={"max_messages": 4})
    publish(t, [{"body": b"x"}] * 10)
    ok(
        t,
        {
            "op": "group.commit",
            "topic": "t",
            "group": "g",
            "offsets": [{"partition": 0, "offset": 2}],
        },
    )
    assert t.group_offsets("t", "g")["partitions"][0]["lag"] == 4


@pytest.mark.parametrize(
    "offsets",
    [
        [{"partition": 0, "offset": 6}],  # beyond the high watermark
        [{"partition": 0, "offset": -1}],
        [{"partition": 2, "offset": 0}],
        [{"partition": 0}],
        [{"partition": 0, "offset": 1}, {"partition": 1, "offset": 99}],  # one bad: none
        [],
        "0",
    ],
)
def test_group_commit_rejects_and_changes_nothing(offsets: Any) -> None:
    t = Topics()
    create(t, partitions=2)
    publish(t, [{"body": b"x"}] * 10)
    cmd = {"op": "group.commit", "topic": "t", "group": "g", "offsets": offsets}
    assert err(t, cmd) == "invalid_request"
    assert t.group_offsets("t", "g")["partitions"][0]["committed"] is None
    assert t.topic_info("t")["groups"] == []


def test_group_commit_at_high_watermark_and_rewind() -> None:
    t = Topics()
    create(t)
    publish(t, [{"body": b"x"}] * 3)
    for offset in (3, 1):
        ok(
            t,
            {
                "op": "group.commit",
                "topic": "t",
                "group": "g",
                "offsets": [{"partition": 0, "offset": offset}],
            },
        )
        assert t.group_offsets("t", "g")["partitions"][0]["committed"] == offset


def test_groups_per_topic_max() -> None:
    t = Topics(TopicLimits(groups_per_topic_max=1))
    create(t)
    commit = {"op": "group.commit", "topic": "t", "offsets": [{"partition": 0, "offset": 0}]}
    ok(t, {**commit, "group": "a"})
    ok(t, {**commit, "group": "a"})
    assert err(t, {**commit, "group": "b"}) == "invalid_request"


# ---------------------------------------------------------------- bindings and routing


def bind(t: Topics, queue: str, topic: str, **kw: Any) -> int:
    result = ok(t, {"op": "binding.create", "queue": queue, "topic": topic, **kw})
    binding_id: int = result["binding"]["id"]
    return binding_id


def test_publish_routes_to_bound_queues_with_position_headers() -> None:
    t = Topics()
    create(t, "orders.eu", partitions=2)
    bind(t, "all-orders", "orders.#")
    bind(t, "eu", "*.eu", headers={"kind": "new"})
    result, routes = t.apply(
        {
            "op": "topic.publish",
            "topic": "orders.eu",
            "messages": [
                {"body": b"1", "key": "a", "headers": {"kind": "new"}},
                {"body": b"2", "key": "a", "headers": {"kind": "old"}},
            ],
        },
        T0,
    )
    p = partition_for_key("a", 2)
    assert [q for q, _ in routes] == ["all-orders", "eu", "all-orders"]
    msg = routes[1][1]
    assert msg["body"] == b"1"
    assert msg["headers"] == {
        "kind": "new",
        "x-topic": "orders.eu",
        "x-partition": str(p),
        "x-offset": "0",
    }
    assert set(msg) == {
        "body",
        "headers",
        "priority",
        "delay_s",
        "group",
        "dedup_id",
        "ttl_s",
        "correlation_id",
        "reply_to",
    }
    assert routes[2][1]["headers"]["x-offset"] == "1"
    assert result["messages"][1] == {"partition": p, "offset": 1, "duplicate": False}


def test_binding_before_and_after_topic_creation() -> None:
    t = Topics()
    bind(t, "early", "logs.*")  # before the topic exists
    create(t, "logs.app")
    bind(t, "late", "logs.app")  # after
    _, routes = t.apply(
        {"op": "topic.publish", "topic": "logs.app", "messages": [{"body": b"x"}]}, T0
    )
    assert [q for q, _ in routes] == ["early", "late"]
    ok(t, {"op": "topic.delete", "topic": "logs.app"})
    create(t, "logs.app")  # re-created later: bindings still match
    _, routes = t.apply(
        {"op": "topic.publish", "topic": "logs.app", "messages": [{"body": b"y"}]}, T0
    )
    assert [q for q, _ in routes] == ["early", "late"]


def test_drop_bindings_for_deleted_queue() -> None:
    t = Topics()
    create(t)
    bind(t, "q1", "t")
    bind(t, "q1", "#")
    bind(t, "q2", "t")
    assert t.drop_bindings_for_queue("q1") == 2
    assert t.list_bindings("q1") == []
    _, routes = t.apply({"op": "topic.publish", "topic": "t", "messages": [{"body": b"x"}]}, T0)
    assert [q for q, _ in routes] == ["q2"]


def test_binding_create_duplicate_and_delete_commands() -> None:
    t = Topics()
    first = ok(t, {"op": "binding.create", "queue": "q", "topic": "a.*"})
    assert first["created"] is True
    again = ok(t, {"op": "binding.create", "queue": "q", "topic": "a.*", "headers": {}})
    assert again == {"binding": first["binding"], "created": False}
    bid = first["binding"]["id"]
    assert err(t, {"op": "binding.delete", "queue": "other", "id": bid}) == "binding_not_found"
    assert err(t, {"op": "binding.delete", "queue": "q", "id": "x"}) == "binding_not_found"
    assert err(t, {"op": "binding.delete", "queue": "q", "id": None}) == "invalid_request"
    assert ok(t, {"op": "binding.delete", "queue": "q", "id": str(bid)}) == {"deleted": True}
    assert err(t, {"op": "binding.create", "queue": "q", "topic": "a*"}) == "invalid_request"
    assert t.list_bindings("q") == []


def test_plan_publish_changes_nothing_until_commit() -> None:
    t = Topics()
    create(t)
    bind(t, "q", "t")
    cmd = {"op": "topic.publish", "topic": "t", "messages": [{"body": b"x"}, {"body": b"y"}]}
    before = msgpack.packb(t.encode())
    result, routes, commit = t.plan_publish(cmd, T0)
    assert len(routes) == 2 and commit is not None
    assert msgpack.packb(t.encode()) == before  # a refused route: drop commit, nothing changed
    result2, _, commit2 = t.plan_publish(cmd, T0)
    assert result2 == result and commit2 is not None
    commit2()
    assert bodies(t) == [b"x", b"y"]
    with pytest.raises(AssertionError):
        commit()  # a stale plan cannot be committed


def test_plan_publish_error() -> None:
    t = Topics()
    result, routes, commit = t.plan_publish({"op": "topic.publish", "topic": "t"}, T0)
    assert result["error"]["code"] == "topic_not_found" and routes == [] and commit is None


def test_matching_topics() -> None:
    t = Topics()
    for name in ("a.b", "a.c", "b.b", "a"):
        create(t, name)
    assert t.matching_topics("a.*") == ["a.b", "a.c"]
    assert t.matching_topics("#.b") == ["a.b", "b.b"]
    assert t.matching_topics("#") == ["a", "a.b", "a.c", "b.b"]
    ok(t, {"op": "topic.delete", "topic": "a.b"})  # the cached answers follow the topics
    assert t.matching_topics("a.*") == ["a.c"]
    create(t, "a.d")
    assert t.matching_topics("a.*") == ["a.c", "a.d"]
    assert t.matching_topics("#") == ["a", "a.c", "a.d", "b.b"]


# ---------------------------------------------------------------- snapshot


def busy_topics() -> Topics:
    t = Topics()
    create(t, "a", partitions=3, retention={"max_messages": 50, "max_age_s": 30})
    create(t, "b.c", durability="memory")
    bind(t, "q1", "#", headers={"x": "1"}, match="any")
    gone = bind(t, "q2", "a")
    ok(t, {"op": "binding.delete", "queue": "q2", "id": gone})
    for i in range(40):
        publish(
            t,
            [
                {
                    "body": bytes([i]) * i,
                    "key": f"k{i % 7}" if i % 2 else None,
                    "headers": {"i": str(i)},
                }
            ],
            "a",
            T0 + i * 1000,
        )
    publish(t, [{"body": b"z"}], "b.c", T0 + 40_000)
    ok(
        t,
        {
            "op": "group.commit",
            "topic": "a",
            "group": "g2",
            "offsets": [{"partition": 2, "offset": 1}, {"partition": 0, "offset": 2}],
        },
        T0 + 40_000,
    )
    ok(
        t,
        {
            "op": "group.commit",
            "topic": "a",
            "group": "g1",
            "offsets": [{"partition": 1, "offset": 1}],
        },
        T0 + 40_000,
    )
    return t


def test_encode_decode_round_trip_is_byte_identical() -> None:
    t = busy_topics()
    data = msgpack.packb(t.encode())
    restored = Topics.decode(msgpack.unpackb(data))
    assert msgpack.packb(restored.encode()) == data
    for name in ("a", "b.c"):
        assert restored.topic_info(name) == t.topic_info(name)
        for p in range(len(t.topics[name].partitions)):
            assert restored.read(name, p, 0, 1000) == t.read(name, p, 0, 1000)
    assert restored.group_offsets("a", "g2") == t.group_offsets("a", "g2")


def test_restored_state_behaves_identically() -> None:
    """Same commands after a restore: same results, routes and encoding (age timers rebuilt)."""
    t = busy_topics()
    restored = Topics.decode(msgpack.unpackb(msgpack.packb(t.encode())))
    cmds: list[dict[str, Any]] = [
        {"op": "topic.publish", "topic": "a", "messages": [{"body": b"n", "headers": {"x": "1"}}]},
        {"op": "binding.create", "queue": "q3", "topic": "a"},
        {"op": "topic.publish", "topic": "a", "messages": [{"body": b"m", "key": "k1"}]},
    ]
    for i, cmd in enumerate(cmds):
        now_ms = T0 + 55_000 + i * 10_000  # crosses several age expiries
        assert t.apply(cmd, now_ms) == restored.apply(cmd, now_ms)
    assert msgpack.packb(t.encode()) == msgpack.packb(restored.encode())


def test_decode_rejects_malformed() -> None:
    good = busy_topics().encode()
    for bad in ({}, {**good, "topics": [["a"]]}, {**good, "topics": [good["topics"][0]] * 2}):
        with pytest.raises(ValueError):
            Topics.decode(bad)


def test_wire_form_of_a_plain_message_reads_back_with_the_defaults() -> None:
    from storage.topics import topic_wire_form

    full = validate_topic_messages([{"body": "a"}, {"body": b"b", "key": "k"},
                                    {"body": "c", "headers": {"h": "v"}}])
    wire = [topic_wire_form(m) for m in full]
    assert wire == [{"body": b"a"}, full[1], full[2]]
    assert validate_topic_messages(wire) == full
    with pytest.raises(BrokerError):  # a wire-form body over the limit is still refused
        validate_topic_messages([{"body": b"12345"}], TopicLimits(body_bytes_max=4))
    t = Topics()
    create(t)
    publish(t, wire)
    assert [(m["body"], m["key"], m["headers"]) for m in t.read("t", 0, 0, 3)["messages"]] == [
        (b"a", None, {}), (b"b", "k", {}), (b"c", None, {"h": "v"})]
