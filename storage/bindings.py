"""Bindings: routing from topics into queues (API.md "Bindings"). Pure, deterministic.

A binding is (queue, topic pattern, headers, match). The pattern is AMQP style over the
dot-separated words of a topic name: `*` is exactly one word, `#` zero or more words, any
other word matches itself (an empty word, as in `a..b`, is a word too). Headers match `all`
(every given pair present with that value) or `any` (at least one pair); no pairs given:
every message.

Matching a publish must not cost O(bindings): patterns are indexed in a trie over words
(`BindingIndex`), walked once per publish with a memo on (node, word position), so the cost
is O(trie nodes reached x words) however many bindings there are. Matched bindings are
returned sorted by id, so every replica routes identically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from storage.errors import BrokerError
from storage.text import utf8

WORD_ONE = "*"
WORD_ANY = "#"
MATCH_MODES = ("all", "any")
PATTERN_CHARS_MAX = 200  # same bound as a topic name
_PATTERN_WORD = re.compile(r"^[A-Za-z0-9_-]*$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class BindingLimits:
    bindings_max: int = 100_000  # whole cluster
    headers_max: int = 64  # pairs in one binding's header match
    header_key_bytes_max: int = 256
    header_value_bytes_max: int = 4096


def pattern_words(pattern: str) -> list[str]:
    return pattern.split(".")


def pattern_matches(pattern: str, topic: str) -> bool:
    """Brute-force reference matcher (also used by live subscribe and by tests)."""
    return _match_words(pattern_words(pattern), 0, topic.split("."), 0, {})


def _match_words(
    pat: list[str], i: int, words: list[str], j: int, memo: dict[tuple[int, int], bool]
) -> bool:
    key = (i, j)
    if key in memo:
        return memo[key]
    if i == len(pat):
        ok = j == len(words)
    elif pat[i] == WORD_ANY:
        ok = _match_words(pat, i + 1, words, j, memo) or (
            j < len(words) and _match_words(pat, i, words, j + 1, memo)
        )
    elif j == len(words):
        ok = False
    else:
        ok = (pat[i] == WORD_ONE or pat[i] == words[j]) and _match_words(
            pat, i + 1, words, j + 1, memo
        )
    memo[key] = ok
    return ok


def headers_match(want: dict[str, str], match: str, headers: dict[str, str]) -> bool:
    """`all`: every wanted pair present; `any`: at least one; nothing wanted: True."""
    assert match in MATCH_MODES, match
    if not want:
        return True
    hits = (headers.get(k) == v for k, v in want.items())
    return all(hits) if match == "all" else any(hits)


def validate_pattern(pattern: Any, field_name: str = "topic") -> str:
    """A binding/subscribe pattern: dot-separated words of [A-Za-z0-9_-], `*` or `#`."""
    if not isinstance(pattern, str) or not pattern:
        raise BrokerError("invalid_request", f"{field_name} must be a non-empty string pattern")
    if len(pattern) > PATTERN_CHARS_MAX:
        raise BrokerError(
            "invalid_request", f"{field_name} is longer than {PATTERN_CHARS_MAX} characters"
        )
    for word in pattern_words(pattern):
        if word not in (WORD_ONE, WORD_ANY) and not _PATTERN_WORD.match(word):
            raise BrokerError(
                "invalid_request",
                f"{field_name} word {word!r} must be '*', '#' or letters, digits, '_', '-'",
            )
    return pattern


def validate_binding(raw: Any, limits: BindingLimits | None = None) -> dict[str, Any]:
    """Normalize a binding body {topic, headers, match} -> all keys present.

    A missing `topic` means `#` (every topic): a header-only binding is header routing.
    """
    lim = limits or BindingLimits()
    if not isinstance(raw, dict):
        raise BrokerError("invalid_request", "binding must be an object")
    unknown = sorted(k for k in raw if k not in ("topic", "headers", "match"))
    if unknown:
        raise BrokerError("invalid_request", f"unknown binding field {unknown[0]!r}")
    pattern = validate_pattern(raw.get("topic", WORD_ANY))
    headers = validate_headers(
        raw.get("headers") or {},
        lim.headers_max,
        lim.header_key_bytes_max,
        lim.header_value_bytes_max,
    )
    match = raw.get("match", "all")
    if match not in MATCH_MODES:
        raise BrokerError("invalid_request", "match must be 'all' or 'any'")
    return {"topic": pattern, "headers": headers, "match": match}


def validate_headers(
    headers: Any, count_max: int, key_bytes_max: int, value_bytes_max: int
) -> dict[str, str]:
    """A {str: str} header map within its limits (shared with topic messages)."""
    if not isinstance(headers, dict):
        raise BrokerError("invalid_request", "headers must be an object of strings")
    if len(headers) > count_max:
        raise BrokerError("invalid_request", f"headers has more than {count_max} pairs")
    for k, v in headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise BrokerError("invalid_request", "headers keys and values must be strings")
        if len(utf8(k, "headers key")) > key_bytes_max:
            raise BrokerError("invalid_request", f"headers key longer than {key_bytes_max} bytes")
        if len(utf8(v, f"headers.{k}")) > value_bytes_max:
            raise BrokerError(
                "invalid_request", f"headers value longer than {value_bytes_max} bytes"
            )
    return dict(headers)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    ids: dict[int, None] = field(default_factory=dict)  # bindings whose pattern ends here


class BindingIndex:
    """A trie over pattern words; `match(topic)` returns the ids of matching patterns, sorted."""

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, binding_id: int) -> None:
        node = self._root
        for word in pattern_words(pattern):
            node = node.children.setdefault(word, _Node())
        assert binding_id not in node.ids, binding_id
        node.ids[binding_id] = None
        self._count += 1

    def remove(self, pattern: str, binding_id: int) -> None:
        path = [self._root]
        words = pattern_words(pattern)
        for word in words:
            path.append(path[-1].children[word])
        assert binding_id in path[-1].ids, binding_id
        del path[-1].ids[binding_id]
        self._count -= 1
        for depth in range(len(words), 0, -1):  # prune empty nodes bottom-up
            node = path[depth]
            if node.ids or node.children:
                break
            del path[depth - 1].children[words[depth - 1]]

    def match(self, topic: str) -> list[int]:
        found: dict[int, None] = {}
        self._walk(self._root, topic.split("."), 0, found, set())
        return sorted(found)

    def _walk(
        self,
        node: _Node,
        words: list[str],
        j: int,
        found: dict[int, None],
        seen: set[tuple[int, int]],
    ) -> None:
        key = (id(node), j)
        if key in seen:  # membership only: the set is never iterated
            return
        seen.add(key)
        hash_child = node.children.get(WORD_ANY)
        if hash_child is not None:  # `#` consumes words[j:k] for every k >= j
            for k in range(j, len(words) + 1):
                self._walk(hash_child, words, k, found, seen)
        if j == len(words):
            found.update(node.ids)
            return
        for word in (words[j], WORD_ONE):
            child = node.children.get(word)
            if child is not None:
                self._walk(child, words, j + 1, found, seen)


@dataclass(frozen=True)
class Binding:
    id: int
    queue: str
    pattern: str
    headers: dict[str, str]
    match: str

    def key(self) -> tuple[str, str, tuple[tuple[str, str], ...], str]:
        return (self.queue, self.pattern, tuple(sorted(self.headers.items())), self.match)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "topic": self.pattern,
            "headers": dict(self.headers),
            "match": self.match,
        }


def route_among(candidates: list[Binding], headers: dict[str, str]) -> list[str]:
    """Queues a message with `headers` goes to: binding-id order, each queue once (AMQP)."""
    queues: dict[str, None] = {}
    for b in candidates:
        if b.queue not in queues and headers_match(b.headers, b.match, headers):
            queues[b.queue] = None
    return list(queues)


class Bindings:
    """All bindings, with the trie index, per-queue lists and a duplicate-detection key."""

    def __init__(self, limits: BindingLimits | None = None) -> None:
        self.limits = limits or BindingLimits()
        self.next_id = 1
        self._by_id: dict[int, Binding] = {}
        self._by_queue: dict[str, dict[int, None]] = {}
        self._by_key: dict[tuple[str, str, tuple[tuple[str, str], ...], str], int] = {}
        self._index = BindingIndex()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, queue: str, spec: dict[str, Any]) -> dict[str, Any]:
        """spec is validate_binding's output. Same (queue, pattern, headers, match): existing."""
        b = Binding(self.next_id, queue, spec["topic"], dict(spec["headers"]), spec["match"])
        existing = self._by_key.get(b.key())
        if existing is not None:
            return {"binding": self._by_id[existing].to_dict(), "created": False}
        if len(self._by_id) >= self.limits.bindings_max:
            raise BrokerError(
                "invalid_request", f"bindings_max ({self.limits.bindings_max}) reached"
            )
        self.next_id += 1
        self._insert(b)
        return {"binding": b.to_dict(), "created": True}

    def _insert(self, b: Binding) -> None:
        assert b.id not in self._by_id, b.id
        self._by_id[b.id] = b
        self._by_queue.setdefault(b.queue, {})[b.id] = None
        self._by_key[b.key()] = b.id
        self._index.add(b.pattern, b.id)
        assert len(self._index) == len(self._by_id)

    def delete(self, queue: str, binding_id: int) -> dict[str, Any]:
        b = self._by_id.get(binding_id)
        if b is None or b.queue != queue:
            raise BrokerError(
                "binding_not_found", f"binding {binding_id} not found on queue {queue!r}"
            )
        self._remove(b)
        return {"deleted": True}

    def _remove(self, b: Binding) -> None:
        del self._by_id[b.id]
        ids = self._by_queue[b.queue]
        del ids[b.id]
        if not ids:
            del self._by_queue[b.queue]
        del self._by_key[b.key()]
        self._index.remove(b.pattern, b.id)
        assert len(self._index) == len(self._by_id)

    def drop_queue(self, queue: str) -> int:
        ids = list(self._by_queue.get(queue, {}))
        for binding_id in ids:
            self._remove(self._by_id[binding_id])
        assert queue not in self._by_queue
        return len(ids)

    def list_for(self, queue: str) -> list[dict[str, Any]]:
        return [self._by_id[i].to_dict() for i in sorted(self._by_queue.get(queue, {}))]

    def candidates(self, topic: str) -> list[Binding]:
        """Bindings whose pattern matches `topic`, by id (one trie walk per publish)."""
        return [self._by_id[i] for i in self._index.match(topic)]

    def route(self, topic: str, headers: dict[str, str]) -> list[str]:
        return route_among(self.candidates(topic), headers)

    def encode(self) -> dict[str, Any]:
        rows = [
            [b.id, b.queue, b.pattern, b.headers, b.match]
            for b in (self._by_id[i] for i in sorted(self._by_id))
        ]
        return {"next_id": self.next_id, "bindings": rows}

    @classmethod
    def decode(cls, obj: Any, limits: BindingLimits | None = None) -> Bindings:
        if not isinstance(obj, dict) or not isinstance(obj.get("bindings"), list):
            raise ValueError("bindings: malformed snapshot section")
        out = cls(limits)
        for row in obj["bindings"]:
            binding_id, queue, pattern, headers, match = row
            if not isinstance(queue, str) or not _QUEUE_NAME.match(queue):
                raise ValueError(f"bindings: bad queue name in snapshot: {queue!r}")
            validate_pattern(pattern)
            out._insert(Binding(int(binding_id), queue, pattern, dict(headers), match))
        out.next_id = int(obj["next_id"])
        if out._by_id and out.next_id <= max(out._by_id):
            raise ValueError("bindings: next_id not above every binding id")
        return out
