"""Bindings: AMQP topic patterns, header matching, the trie index, duplicates, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.bindings import (
    BindingIndex,
    BindingLimits,
    Bindings,
    headers_match,
    pattern_matches,
    validate_binding,
    validate_pattern,
)
from storage.errors import BrokerError

# (pattern, topic, matches)
PATTERN_TABLE = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b.c", "a.b.c.d", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.x.c", False),
    ("a.*.c", "a..c", True),  # `*` matches one (empty) word
    ("a.#", "a", True),  # `#` matches zero words
    ("a.#", "a.b", True),
    ("a.#", "a.b.c.d", True),
    ("a.#", "b.a", False),
    ("a.#", "ab", False),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.b.c.d", False),
    ("a.#.c", "a.c.c", True),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("#.c", "a.c.b", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("a..b", "a..b", True),  # empty words are words
    ("a..b", "a.b", False),
    ("a.", "a.", True),
    ("a.", "a", False),
    ("#.#", "a", True),
    ("#.*", "a", True),
    ("#.*", "a.b.c", True),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
    ("orders", "orders", True),
    ("orders", "orders.eu", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), PATTERN_TABLE)
def test_pattern_table_brute_force(pattern: str, topic: str, expected: bool) -> None:
    assert pattern_matches(pattern, topic) is expected


@pytest.mark.parametrize(("pattern", "topic", "expected"), PATTERN_TABLE)
def test_pattern_table_trie(pattern: str, topic: str, expected: bool) -> None:
    index = BindingIndex()
    index.add(pattern, 7)
    index.add("zzz.never", 8)
    assert index.match(topic) == ([7] if expected else [])


def test_headers_all_any_none() -> None:
    msg = {"region": "eu", "kind": "order"}
    assert headers_match({"region": "eu", "kind": "order"}, "all", msg)
    assert not headers_match({"region": "eu", "kind": "refund"}, "all", msg)
    assert headers_match({"region": "us", "kind": "order"}, "any", msg)
    assert not headers_match({"region": "us", "kind": "refund"}, "any", msg)
    assert not headers_match({"missing": "x"}, "all", {})
    assert headers_match({}, "all", {}) and headers_match({}, "any", msg)


def test_validate_binding_defaults_and_header_only() -> None:
    assert validate_binding({"headers": {"region": "eu"}}) == {
        "topic": "#",
        "headers": {"region": "eu"},
        "match": "all",
    }
    assert validate_binding({"topic": "a.*", "match": "any"})["match"] == "any"


@pytest.mark.parametrize(
    "raw",
    [
        {"topic": ""},
        {"topic": "a*.b"},
        {"topic": "a.b#"},
        {"topic": "a b"},
        {"topic": 5},
        {"topic": "x" * 201},
        {"topic": "a", "match": "some"},
        {"topic": "a", "headers": {"k": 1}},
        {"topic": "a", "headers": ["k"]},
        {"topic": "a", "bogus": 1},
        "a.b",
    ],
)
def test_validate_binding_rejects(raw: object) -> None:
    with pytest.raises(BrokerError) as err:
        validate_binding(raw)
    assert err.value.code == "invalid_request"


def test_validate_binding_header_limits() -> None:
    lim = BindingLimits(headers_max=2, header_key_bytes_max=3, header_value_bytes_max=3)
    validate_binding({"headers": {"a": "1", "b": "2"}}, lim)
    for headers in ({"a": "1", "b": "2", "c": "3"}, {"long": "1"}, {"a": "long"}):
        with pytest.raises(BrokerError, match="headers"):
            validate_binding({"headers": headers}, lim)


def spec(
    topic: str, headers: dict[str, str] | None = None, match: str = "all"
) -> dict[str, object]:
    return validate_binding({"topic": topic, "headers": headers or {}, "match": match})


def test_duplicate_binding_returns_existing() -> None:
    b = Bindings()
    first = b.create("q", spec("a.*", {"x": "1", "y": "2"}))
    assert first["created"] is True
    again = b.create("q", spec("a.*", {"y": "2", "x": "1"}))  # header order is irrelevant
    assert again == {"binding": first["binding"], "created": False}
    other = b.create("q", spec("a.*", {"x": "1", "y": "2"}, "any"))
    assert other["created"] and other["binding"]["id"] != first["binding"]["id"]
    assert len(b) == 2


def test_route_sorted_by_id_and_one_message_per_queue() -> None:
    b = Bindings()
    b.create("q2", spec("orders.#"))
    b.create("q1", spec("orders.eu"))
    b.create("q2", spec("*.eu"))  # q2 matched twice: still one copy
    b.create("q3", spec("#", {"region": "eu"}))  # header routing
    b.create("q4", spec("#", {"region": "us"}))
    assert b.route("orders.eu", {"region": "eu"}) == ["q2", "q1", "q3"]
    assert b.route("orders.us", {"region": "us"}) == ["q2", "q4"]
    assert b.route("refunds", {}) == []


def test_delete_and_drop_queue() -> None:
    b = Bindings()
    one = b.create("q1", spec("a.#"))["binding"]["id"]
    b.create("q1", spec("b"))
    keep = b.create("q2", spec("a.#"))["binding"]["id"]
    with pytest.raises(BrokerError) as err:
        b.delete("q2", one)  # another queue's binding
    assert err.value.code == "binding_not_found"
    assert b.delete("q1", one) == {"deleted": True}
    assert b.route("a.x", {}) == ["q2"]
    assert b.drop_queue("q1") == 1
    assert b.list_for("q1") == [] and b.route("b", {}) == []
    assert [x["id"] for x in b.list_for("q2")] == [keep]
    assert b.drop_queue("nope") == 0


def test_bindings_max() -> None:
    b = Bindings(BindingLimits(bindings_max=2))
    b.create("q", spec("a"))
    b.create("q", spec("b"))
    assert b.create("q", spec("a"))["created"] is False  # a duplicate is not a new binding
    with pytest.raises(BrokerError, match="bindings_max"):
        b.create("q", spec("c"))


def test_ids_are_not_reused_after_delete() -> None:
    b = Bindings()
    first = b.create("q", spec("a"))["binding"]["id"]
    b.delete("q", first)
    assert b.create("q", spec("a"))["binding"]["id"] == first + 1


def test_trie_prunes_on_remove() -> None:
    index = BindingIndex()
    index.add("a.b.c", 1)
    index.add("a.#", 2)
    index.remove("a.b.c", 1)
    index.remove("a.#", 2)
    assert len(index) == 0 and index.match("a.b.c") == []
    assert not index._root.children


def test_encode_decode_round_trip() -> None:
    b = Bindings()
    b.create("q1", spec("a.#", {"k": "v"}, "any"))
    gone = b.create("q2", spec("*.b"))["binding"]["id"]
    b.create("q3", spec("#"))
    b.delete("q2", gone)
    restored = Bindings.decode(b.encode())
    assert restored.encode() == b.encode()
    assert restored.route("a.b", {"k": "v"}) == b.route("a.b", {"k": "v"}) == ["q1", "q3"]
    assert restored.create("q9", spec("z"))["binding"]["id"] == b.next_id


def test_decode_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        Bindings.decode({"next_id": 1})
    with pytest.raises(ValueError):
        Bindings.decode({"next_id": 1, "bindings": [[5, "q", "a", {}, "all"]]})


def test_validate_pattern_names_field() -> None:
    with pytest.raises(BrokerError, match="topics"):
        validate_pattern("a*", "topics")


# ---------------------------------------------------------------- trie == brute force

WORDS = st.sampled_from(["a", "b", "c", ""])
PATTERN_WORDS = st.sampled_from(["a", "b", "c", "", "*", "#"])


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(st.lists(PATTERN_WORDS, min_size=1, max_size=5), max_size=12),
    topics=st.lists(st.lists(WORDS, min_size=1, max_size=6), min_size=1, max_size=8),
)
def test_trie_equals_brute_force(patterns: list[list[str]], topics: list[list[str]]) -> None:
    index = BindingIndex()
    seen: dict[str, int] = {}
    for i, words in enumerate(patterns, start=1):
        index.add(".".join(words), i)
        seen[".".join(words)] = i
    for words in topics:
        topic = ".".join(words)
        expected = [
            i for i, w in enumerate(patterns, start=1) if pattern_matches(".".join(w), topic)
        ]
        assert index.match(topic) == expected
    for pattern, i in seen.items():  # removal keeps the rest intact
        index.remove(pattern, i)
    assert len(index) == len(patterns) - len(seen)


def test_many_bindings_match_cost_is_not_linear() -> None:
    """10,000 exact bindings on distinct topics: a publish visits a handful of trie nodes."""
    index = BindingIndex()
    for i in range(10_000):
        index.add(f"orders.region{i}.created", i + 1)
    calls = 0
    walk = index._walk

    def counting(*args: object) -> None:
        nonlocal calls
        calls += 1
        walk(*args)  # type: ignore[arg-type]

    index._walk = counting  # type: ignore[method-assign,assignment]
    assert index.match("orders.region42.created") == [43]
    assert calls < 10
