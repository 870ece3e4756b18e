"""Random command streams: replicas agree, restores agree, and the log invariants hold."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.topics import Topics

TOPICS = st.sampled_from(["a.b", "b.c", "a.b.c"])
QUEUES = st.sampled_from(["q1", "q2", "q3"])
PATTERNS = st.sampled_from(["a", "a.*", "a.#", "#", "*.c", "#.c", "a.b.c"])
HEADERS = st.dictionaries(st.sampled_from(["r", "k"]), st.sampled_from(["1", "2"]), max_size=2)

MESSAGE = st.fixed_dictionaries(
    {
        "body": st.binary(max_size=20),
        "headers": HEADERS,
        "key": st.one_of(st.none(), st.sampled_from(["x", "y", "z", "w"])),
    }
)

PUBLISH = st.fixed_dictionaries(
    {
        "op": st.just("topic.publish"),
        "topic": TOPICS,
        "messages": st.lists(MESSAGE, min_size=1, max_size=5),
    }
)
SETUP = [  # every run starts with two topics, one trimmed by age and count, one by bytes
    {
        "op": "topic.create",
        "topic": "a.b",
        "config": {"partitions": 3, "retention": {"max_messages": 6, "max_age_s": 4}},
    },
    {"op": "topic.create", "topic": "b.c", "config": {"retention": {"max_bytes": 40}}},
]

COMMAND = st.one_of(
    PUBLISH,
    PUBLISH,
    PUBLISH,
    st.fixed_dictionaries(
        {
            "op": st.just("topic.create"),
            "topic": TOPICS,
            "config": st.fixed_dictionaries(
                {
                    "partitions": st.integers(1, 3),
                    "retention": st.fixed_dictionaries(
                        {
                            "max_messages": st.sampled_from([0, 3, 10]),
                            "max_bytes": st.sampled_from([0, 40]),
                            "max_age_s": st.sampled_from([0, 2, 5]),
                        }
                    ),
                }
            ),
        }
    ),
    st.fixed_dictionaries({"op": st.just("topic.delete"), "topic": TOPICS}),
    st.fixed_dictionaries(
        {
            "op": st.just("binding.create"),
            "queue": QUEUES,
            "topic": PATTERNS,
            "headers": HEADERS,
            "match": st.sampled_from(["all", "any"]),
        }
    ),
    st.fixed_dictionaries(
        {"op": st.just("binding.delete"), "queue": QUEUES, "id": st.integers(1, 8)}
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("group.commit"),
            "topic": TOPICS,
            "group": st.sampled_from(["g1", "g2"]),
            "offsets": st.lists(
                st.fixed_dictionaries(
                    {"partition": st.integers(0, 2), "offset": st.integers(0, 6)}
                ),
                min_size=1,
                max_size=2,
            ),
        }
    ),
)

STEP = st.tuples(COMMAND, st.integers(0, 3000))  # (command, ms since the previous one)


def snapshot(t: Topics) -> bytes:
    data: bytes = msgpack.packb(t.encode())
    return data


def check_invariants(t: Topics) -> None:
    for name, topic in t.topics.items():
        for p in range(len(topic.partitions)):
            r = t.read(name, p, 0, 1000)
            offsets = [m["offset"] for m in r["messages"]]
            assert offsets == list(range(r["low_watermark"], r["high_watermark"]))
            times = [m["published_at"] for m in r["messages"]]
            assert times == sorted(times)
            age_ms = topic.config["retention"]["max_age_s"] * 1000
            if age_ms:
                assert all(t.now_ms - ts < age_ms for ts in times)
            cap = topic.config["retention"]["max_messages"]
            if cap:
                assert len(offsets) <= cap
        for row in t.group_offsets(name, "g1")["partitions"]:
            assert row["lag"] >= 0


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(STEP, max_size=40), cut=st.integers(0, 40))
def test_replicas_and_restores_agree(steps: list[tuple[dict[str, Any], int]], cut: int) -> None:
    a, b = Topics(), Topics()
    restored: Topics | None = None
    now_ms = 1_000_000
    for cmd in SETUP:
        assert a.apply(cmd, now_ms) == b.apply(cmd, now_ms)
    for i, (cmd, delta_ms) in enumerate(steps):
        if i == cut:
            restored = Topics.decode(msgpack.unpackb(snapshot(a)))
            assert snapshot(restored) == snapshot(a)
        now_ms += delta_ms
        out_a = a.apply(cmd, now_ms)
        assert b.apply(cmd, now_ms) == out_a
        if restored is not None:
            assert restored.apply(cmd, now_ms) == out_a
        check_invariants(a)
    assert snapshot(a) == snapshot(b)
    if restored is not None:
        assert snapshot(restored) == snapshot(a)
