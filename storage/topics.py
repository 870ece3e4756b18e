"""Topics: partitioned, offset-indexed logs with retention and consumer-group offsets. Pure.

`BrokerState` owns one `Topics` and dispatches the topic ops to `Topics.apply` (see
docs/architecture.md 1.3). No I/O, no clock, no randomness; time is the `now_ms` of the
command, kept monotonic here as `self.now_ms`.

* A message with a `key` goes to partition `crc32(key) % partitions` (stable across processes,
  unlike `hash()`); without a key, round-robin from a per-topic counter in the state.
* Offsets per partition start at 0, are gap-free and strictly increasing. A partition log is a
  list plus a head index and the offset of the head (the low watermark): append and trim are
  O(1) (amortized: the list is compacted when the dead prefix is over half of it), a read by
  offset is index arithmetic, a read by time is a binary search on `published_at`, which is
  non-decreasing because `now_ms` is.
* Retention on command time: `max_messages` and `max_bytes` trim on publish (the newest message
  is always kept); `max_age_s` trims in `advance()` from a heap holding one due time per
  non-empty partition, so expiry costs O(expired).
* A publish is planned first (`plan_publish`: offsets and the routes to bound queues, nothing
  changed), then committed by the returned function once `BrokerState` has checked that every
  target queue accepts its messages: the publish is all or nothing.
* Consumer-group offsets: the committed offset is the next offset the group will read (Kafka's
  convention); lag = high_watermark - max(committed, low_watermark), i.e. the messages the group
  can still read; a group that never committed a partition reads from the low watermark.
"""

from __future__ import annotations

import bisect
import heapq
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from storage.bindings import (
    Binding,
    BindingLimits,
    Bindings,
    pattern_matches,
    route_among,
    validate_binding,
    validate_headers,
)
from storage.errors import BrokerError, error_result
from storage.limits import Limits
from storage.text import utf8

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
DURABILITIES = ("fsync", "memory")
INT_VALUE_MAX = 2**53  # every count/size/age in a config stays exact in JSON
_MESSAGE_KEYS = frozenset(("body", "headers", "key"))  # membership tests only
_COMPACT_MIN = 1024  # dead list slots before a partition log is compacted
_MATCH_CACHE_MAX = 1024  # subscribe patterns whose matching topic names are cached
_HEAP_SLACK = 1024  # stale age-timer entries tolerated before the heap is rebuilt

Result = dict[str, Any]
Route = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class TopicLimits:
    topics_max: int = 10_000
    partitions_max: int = 64
    messages_per_publish_max: int = 1000  # batch_messages_max
    body_bytes_max: int = 1024 * 1024
    key_bytes_max: int = 1024
    headers_max: int = 64
    header_key_bytes_max: int = 256
    header_value_bytes_max: int = 4096
    read_messages_max: int = 1000
    read_bytes_max: int = 8 * 1024 * 1024  # a read stops here (it returns at least one message)
    groups_per_topic_max: int = 10_000

    @classmethod
    def from_limits(cls, limits: Limits) -> TopicLimits:
        """The cluster-wide limits that topics share with queues (storage.limits)."""
        return cls(
            messages_per_publish_max=limits.batch_messages_max,
            body_bytes_max=limits.body_bytes_max,
            headers_max=limits.headers_max,
            header_key_bytes_max=limits.header_key_bytes_max,
            header_value_bytes_max=limits.header_value_bytes_max,
            read_messages_max=limits.batch_messages_max,
        )


def default_topic_config() -> dict[str, Any]:
    return {
        "partitions": 1,
        "retention": {"max_messages": 0, "max_bytes": 0, "max_age_s": 604800},
        "durability": "fsync",
    }


# ---------------------------------------------------------------- validators (pure, raise)


def validate_name(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise BrokerError(
            "invalid_request",
            f"{field_name} must match ^[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,199}}$",
        )
    return value


def _int_field(value: Any, field_name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BrokerError("invalid_request", f"{field_name} must be an integer in {lo}..{hi}")
    return value


def validate_topic_config(raw: Any, limits: TopicLimits | None = None) -> dict[str, Any]:
    """Normalize a topic config (API.md PUT /v1/topics/{topic}); every key present."""
    lim = limits or TopicLimits()
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise BrokerError("invalid_request", "topic config must be an object")
    _no_unknown(raw, ("partitions", "retention", "durability"), "topic config")
    cfg = default_topic_config()
    if "partitions" in raw:
        cfg["partitions"] = _int_field(raw["partitions"], "partitions", 1, lim.partitions_max)
    retention = {} if raw.get("retention") is None else raw["retention"]
    if not isinstance(retention, dict):
        raise BrokerError("invalid_request", "retention must be an object")
    _no_unknown(retention, tuple(cfg["retention"]), "retention")
    for key in cfg["retention"]:
        if key in retention:
            cfg["retention"][key] = _int_field(retention[key], f"retention.{key}", 0, INT_VALUE_MAX)
    if "durability" in raw:
        if raw["durability"] not in DURABILITIES:
            raise BrokerError("invalid_request", "durability must be 'fsync' or 'memory'")
        cfg["durability"] = raw["durability"]
    return cfg


def _no_unknown(raw: dict[str, Any], known: tuple[str, ...], what: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise BrokerError("invalid_request", f"unknown {what} field {unknown[0]!r}")


def validate_topic_messages(raw: Any, limits: TopicLimits | None = None) -> list[dict[str, Any]]:
    """Normalize `messages` of a topic publish -> [{body: bytes, headers, key: str|None}]."""
    lim = limits or TopicLimits()
    if not isinstance(raw, list) or not raw:
        raise BrokerError("invalid_request", "messages must be a non-empty list")
    if len(raw) > lim.messages_per_publish_max:
        raise BrokerError(
            "batch_too_large", f"messages has more than {lim.messages_per_publish_max} entries"
        )
    return [_validate_message(m, i, lim) for i, m in enumerate(raw)]


def topic_wire_form(normalized: dict[str, Any]) -> dict[str, Any]:
    """A normalized topic message as the node proposes it: without empty headers and a None
    key (validate_topic_messages reads them back as those defaults)."""
    if normalized["headers"] or normalized["key"] is not None:
        return normalized
    return {"body": normalized["body"]}


def _validate_message(msg: Any, i: int, lim: TopicLimits) -> dict[str, Any]:
    if type(msg) is dict and len(msg) == 1:  # the common message: a body, nothing else
        body = msg.get("body")
        if type(body) is bytes and len(body) <= lim.body_bytes_max:
            return {"body": body, "headers": {}, "key": None}
    if not isinstance(msg, dict):
        raise BrokerError("invalid_request", f"messages[{i}] must be an object")
    if not _MESSAGE_KEYS.issuperset(msg):
        _no_unknown(msg, tuple(sorted(_MESSAGE_KEYS)), f"messages[{i}]")
    body = msg.get("body")
    if isinstance(body, str):
        body = utf8(body, f"messages[{i}].body")
    if not isinstance(body, bytes):
        raise BrokerError("invalid_request", f"messages[{i}].body is required (string or bytes)")
    if len(body) > lim.body_bytes_max:
        raise BrokerError(
            "message_too_large", f"messages[{i}].body is over {lim.body_bytes_max} bytes"
        )
    key = msg.get("key")
    if key is not None and (not isinstance(key, str)
                            or len(utf8(key, f"messages[{i}].key")) > lim.key_bytes_max):
        raise BrokerError(
            "invalid_request", f"messages[{i}].key must be a string of <= {lim.key_bytes_max} bytes"
        )
    headers = msg.get("headers")
    if headers:
        headers = validate_headers(
            headers, lim.headers_max, lim.header_key_bytes_max, lim.header_value_bytes_max
        )
    elif headers is not None and not isinstance(headers, dict):
        raise BrokerError("invalid_request", f"messages[{i}].headers must be an object")
    return {"body": body, "headers": headers or {}, "key": key}


def partition_for_key(key: str, partitions: int) -> int:
    """Stable across processes and versions: crc32 of the UTF-8 key."""
    assert partitions >= 1
    return zlib.crc32(key.encode()) % partitions


# ---------------------------------------------------------------- partition log


class Entry(NamedTuple):
    key: str | None
    body: bytes
    headers: dict[str, str]
    published_at: int  # ms since the epoch (command time)
    size_bytes: int


def entry_size(key: str | None, body: bytes, headers: dict[str, str]) -> int:
    """Bytes counted by retention.max_bytes: body + key + header keys and values (UTF-8)."""
    size = len(body) + (len(key.encode()) if key is not None else 0)
    if headers:
        size += sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    return size


class Partition:
    """Offsets [low_watermark, high_watermark) live in entries[head:]."""

    __slots__ = ("entries", "head", "low_watermark", "high_watermark", "bytes", "timer_ms")

    def __init__(self, low_watermark: int = 0) -> None:
        self.entries: list[Entry | None] = []
        self.head = 0
        self.low_watermark = low_watermark
        self.high_watermark = low_watermark  # the next offset
        self.bytes = 0
        self.timer_ms: int | None = None  # due time of this partition's age-retention timer

    def __len__(self) -> int:
        return self.high_watermark - self.low_watermark

    def append(self, entry: Entry) -> int:
        offset = self.high_watermark
        self.entries.append(entry)
        self.high_watermark += 1
        self.bytes += entry.size_bytes
        assert len(self.entries) - self.head == self.high_watermark - self.low_watermark
        return offset

    def slice(self, start: int, stop: int) -> list[Entry | None]:
        """Entries of offsets [start, stop), both within the watermarks."""
        assert self.low_watermark <= start <= stop <= self.high_watermark, (start, stop)
        i = self.head + start - self.low_watermark
        return self.entries[i : i + stop - start]

    def oldest(self) -> Entry:
        entry = self.entries[self.head]
        assert entry is not None
        return entry

    def pop_oldest(self) -> Entry:
        entry = self.oldest()
        self.entries[self.head] = None  # free the body now
        self.head += 1
        self.low_watermark += 1
        self.bytes -= entry.size_bytes
        if self.head >= _COMPACT_MIN and self.head * 2 >= len(self.entries):
            del self.entries[: self.head]
            self.head = 0
        assert self.bytes >= 0
        return entry

    def first_offset_at(self, time_ms: int) -> int:
        """The first offset published at or after time_ms (high_watermark if none)."""
        i = bisect.bisect_left(
            self.entries, time_ms, lo=self.head, key=lambda e: e.published_at if e else 0
        )
        return self.low_watermark + i - self.head


class Topic:
    __slots__ = ("name", "uid", "config", "partitions", "rr_next", "published_total", "groups")

    def __init__(self, name: str, uid: int, config: dict[str, Any]) -> None:
        self.name = name
        self.uid = uid  # distinguishes a re-created topic of the same name (timers)
        self.config = config
        self.partitions = [Partition() for _ in range(config["partitions"])]
        self.rr_next = 0  # round-robin counter for messages without a key
        self.published_total = 0
        self.groups: dict[str, dict[int, int]] = {}  # group -> partition -> committed offset

    @property
    def max_age_ms(self) -> int:
        return int(self.config["retention"]["max_age_s"]) * 1000


# ---------------------------------------------------------------- the state machine part


class Topics:
    def __init__(
        self, limits: TopicLimits | None = None, binding_limits: BindingLimits | None = None
    ) -> None:
        self.limits = limits or TopicLimits()
        self.topics: dict[str, Topic] = {}
        self.bindings = Bindings(binding_limits)
        self.next_topic_uid = 1
        self.now_ms = 0
        self._age_heap: list[tuple[int, str, int, int]] = []  # (due_ms, topic, uid, partition)
        self._timers_live = 0  # heap entries of existing partitions (the rest are stale)
        # derived, not replicated: live subscribes ask on every apply (O(topics) to compute)
        self._names_version = 0  # bumped when a topic is created or deleted
        self._match_cache: dict[str, tuple[int, list[str]]] = {}

    # -- commands

    def apply(self, cmd: dict[str, Any], now_ms: int) -> tuple[Result, list[Route]]:
        """Apply one topic/binding/group command. Never raises for bad input."""
        self.advance(now_ms)
        op = cmd.get("op") if isinstance(cmd, dict) else None
        if op == "topic.publish":
            result, routes, commit = self.plan_publish(cmd, now_ms)
            if commit is not None:
                commit()
            return result, routes
        handler = _HANDLERS.get(op) if isinstance(op, str) else None
        if handler is None:
            return error_result("invalid_request", f"unknown topic op {op!r}"), []
        try:
            return handler(self, cmd), []
        except BrokerError as e:
            return e.to_result(), []

    def plan_publish(
        self, cmd: dict[str, Any], now_ms: int
    ) -> tuple[Result, list[Route], Callable[[], None] | None]:
        """Offsets and routes of a publish without changing anything.

        Returns (result, routes, commit). On error: (error result, [], None). Otherwise call
        `commit()` exactly once, before any other command, to append the messages; or drop it
        to abandon the publish (nothing changed).
        """
        self.advance(now_ms)
        try:
            topic = self._topic(cmd)
            messages = validate_topic_messages(cmd.get("messages"), self.limits)
        except BrokerError as e:
            return e.to_result(), [], None
        placed = self._place(topic, messages)
        candidates = self.bindings.candidates(topic.name)
        routes: list[Route] = []
        for msg, (p, offset) in zip(messages, placed, strict=True):
            routes.extend(_routes(topic.name, msg, p, offset, candidates))
        result: Result = {
            "messages": [{"partition": p, "offset": o, "duplicate": False} for p, o in placed],
            "duplicate": False,
        }

        def commit() -> None:
            self._commit_publish(topic, messages, placed)

        return result, routes, commit

    def _place(self, topic: Topic, messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
        n = len(topic.partitions)
        pending = [0] * n
        rr = topic.rr_next
        placed = []
        for msg in messages:
            if msg["key"] is not None:
                p = partition_for_key(msg["key"], n)
            else:
                p, rr = rr % n, rr + 1
            placed.append((p, topic.partitions[p].high_watermark + pending[p]))
            pending[p] += 1
        return placed

    def _commit_publish(
        self, topic: Topic, messages: list[dict[str, Any]], placed: list[tuple[int, int]]
    ) -> None:
        assert self.topics.get(topic.name) is topic, "topic changed between plan and commit"
        for msg, (p, offset) in zip(messages, placed, strict=True):
            part = topic.partitions[p]
            size = entry_size(msg["key"], msg["body"], msg["headers"])
            entry = Entry(msg["key"], msg["body"], msg["headers"], self.now_ms, size)
            appended = part.append(entry)
            assert appended == offset, "publish committed twice or out of order"
            if msg["key"] is None:
                topic.rr_next += 1
        topic.published_total += len(messages)
        for p in sorted({p for p, _ in placed}):
            self._trim_size(topic, topic.partitions[p])
            self._schedule_age(topic, p)

    def _topic(self, cmd: dict[str, Any]) -> Topic:
        name = validate_name(cmd.get("topic"), "topic")
        topic = self.topics.get(name)
        if topic is None:
            raise BrokerError("topic_not_found", f"topic {name!r} does not exist")
        return topic

    def _create(self, cmd: dict[str, Any]) -> Result:
        name = validate_name(cmd.get("topic"), "topic")
        config = validate_topic_config(cmd.get("config"), self.limits)
        existing = self.topics.get(name)
        if existing is not None:
            if existing.config != config:
                raise BrokerError("already_exists", f"topic {name!r} exists with another config")
            return {"topic": {"name": name, **existing.config}, "created": False}
        if len(self.topics) >= self.limits.topics_max:
            raise BrokerError("invalid_request", f"topics_max ({self.limits.topics_max}) reached")
        self.topics[name] = Topic(name, self.next_topic_uid, config)
        self._names_version += 1
        self.next_topic_uid += 1
        return {"topic": {"name": name, **config}, "created": True}

    def _delete(self, cmd: dict[str, Any]) -> Result:
        topic = self._topic(cmd)
        del self.topics[topic.name]  # its age timers go stale (uid check in advance)
        self._names_version += 1
        self._timers_live -= sum(1 for part in topic.partitions if part.timer_ms is not None)
        if len(self._age_heap) > 2 * self._timers_live + _HEAP_SLACK:
            self._rebuild_age_heap()  # topic churn must not grow the heap without bound
        assert 0 <= self._timers_live <= len(self._age_heap)
        return {"deleted": True}

    def _binding_create(self, cmd: dict[str, Any]) -> Result:
        queue = validate_name(cmd.get("queue"), "queue")
        spec = validate_binding(
            {k: cmd[k] for k in ("topic", "headers", "match") if k in cmd},
            self.bindings.limits,
        )
        return self.bindings.create(queue, spec)

    def _binding_delete(self, cmd: dict[str, Any]) -> Result:
        queue = validate_name(cmd.get("queue"), "queue")
        binding_id = cmd.get("id")
        if isinstance(binding_id, str):  # from a URL path: not a number, no such binding
            binding_id = int(binding_id) if binding_id.isdecimal() else -1
        if isinstance(binding_id, bool) or not isinstance(binding_id, int):
            raise BrokerError("invalid_request", "id must be a binding id (integer)")
        return self.bindings.delete(queue, binding_id)

    def _group_commit(self, cmd: dict[str, Any]) -> Result:
        topic = self._topic(cmd)
        group = validate_name(cmd.get("group"), "group")
        offsets = cmd.get("offsets")
        if not isinstance(offsets, list) or not offsets:
            raise BrokerError("invalid_request", "offsets must be a non-empty list")
        checked = [self._check_commit(topic, o, i) for i, o in enumerate(offsets)]
        if group not in topic.groups and len(topic.groups) >= self.limits.groups_per_topic_max:
            raise BrokerError(
                "invalid_request",
                f"groups_per_topic_max ({self.limits.groups_per_topic_max}) reached",
            )
        committed = topic.groups.setdefault(group, {})
        for p, offset in checked:  # all validated first: all or nothing
            committed[p] = offset
        return {"committed": len(checked)}

    def _check_commit(self, topic: Topic, item: Any, i: int) -> tuple[int, int]:
        if not isinstance(item, dict):
            raise BrokerError("invalid_request", f"offsets[{i}] must be an object")
        n = len(topic.partitions)
        p = _int_field(item.get("partition"), f"offsets[{i}].partition", 0, n - 1)
        hw = topic.partitions[p].high_watermark
        offset = _int_field(item.get("offset"), f"offsets[{i}].offset", 0, hw)
        return p, offset

    # -- time and retention

    def advance(self, now_ms: int) -> None:
        """Move command time forward and expire messages by age: O(expired)."""
        self.now_ms = max(self.now_ms, now_ms)
        heap = self._age_heap
        while heap and heap[0][0] <= self.now_ms:
            _, name, uid, p = heapq.heappop(heap)
            topic = self.topics.get(name)
            if topic is None or topic.uid != uid:
                continue  # the topic was deleted (or re-created) since
            topic.partitions[p].timer_ms = None
            self._timers_live -= 1
            self._trim_age(topic, topic.partitions[p])
            self._schedule_age(topic, p)

    def _trim_age(self, topic: Topic, part: Partition) -> None:
        max_age_ms = topic.max_age_ms
        assert max_age_ms > 0
        while len(part) and part.oldest().published_at + max_age_ms <= self.now_ms:
            part.pop_oldest()

    def _schedule_age(self, topic: Topic, p: int) -> None:
        part = topic.partitions[p]
        if topic.max_age_ms == 0 or part.timer_ms is not None or not len(part):
            return
        due_ms = part.oldest().published_at + topic.max_age_ms
        part.timer_ms = due_ms
        self._timers_live += 1
        heapq.heappush(self._age_heap, (due_ms, topic.name, topic.uid, p))

    def _rebuild_age_heap(self) -> None:
        """Drop the stale entries; live timers keep their due times (same behaviour)."""
        self._age_heap = [
            (part.timer_ms, topic.name, topic.uid, p)
            for topic in self.topics.values()
            for p, part in enumerate(topic.partitions)
            if part.timer_ms is not None
        ]
        heapq.heapify(self._age_heap)
        assert len(self._age_heap) == self._timers_live

    def _trim_size(self, topic: Topic, part: Partition) -> None:
        retention = topic.config["retention"]
        max_messages, max_bytes = retention["max_messages"], retention["max_bytes"]
        while max_messages and len(part) > max_messages:
            part.pop_oldest()
        while max_bytes and part.bytes > max_bytes and len(part) > 1:
            part.pop_oldest()
        assert len(part) >= 1

    # -- bindings helpers for BrokerState

    def drop_bindings_for_queue(self, queue: str) -> int:
        """Call when a queue is deleted (or expires): its bindings go with it."""
        return self.bindings.drop_queue(queue)

    # -- reads (pure; call under the replica's apply lock)

    def list_topics(self) -> list[Result]:
        return [self._info(self.topics[name]) for name in sorted(self.topics)]

    def topic_info(self, name: str) -> Result:
        topic = self.topics.get(name)
        if topic is None:
            return error_result("topic_not_found", f"topic {name!r} does not exist")
        return self._info(topic)

    def _info(self, topic: Topic) -> Result:
        parts = [
            {
                "partition": p,
                "low_watermark": part.low_watermark,
                "high_watermark": part.high_watermark,
                "messages": len(part),
                "bytes": part.bytes,
            }
            for p, part in enumerate(topic.partitions)
        ]
        return {
            "name": topic.name,
            "config": _copy_config(topic.config),
            "partitions": parts,
            "retention": dict(topic.config["retention"]),
            "groups": sorted(topic.groups),
            "published_total": topic.published_total,
        }

    def read(
        self,
        topic_name: str,
        partition: int,
        offset: int,
        max_messages: int,
        from_time_ms: int | None = None,
    ) -> Result:
        """Messages of one partition from `offset` (or from the first at/after from_time_ms).

        Below the low watermark (retention removed those): the read starts at the low watermark
        and says `"truncated": true`. At or past the high watermark: no messages, and
        `next_offset` is the offset asked for (a long poll waits there).
        """
        try:
            part = self._read_partition(topic_name, partition)
            max_messages = _int_field(max_messages, "max", 1, self.limits.read_messages_max)
            offset = _int_field(offset, "offset", 0, INT_VALUE_MAX)
            if from_time_ms is not None:
                _int_field(from_time_ms, "from_time", 0, INT_VALUE_MAX)
                offset = part.first_offset_at(from_time_ms)
        except BrokerError as e:
            return e.to_result()
        truncated = offset < part.low_watermark
        start = max(offset, part.low_watermark)
        stop = min(start + max_messages, part.high_watermark)
        messages: list[Result] = []
        size = 0
        entries = part.slice(start, stop) if start < stop else []
        for off, entry in enumerate(entries, start):
            assert entry is not None
            if messages and size + entry.size_bytes > self.limits.read_bytes_max:
                break
            size += entry.size_bytes
            messages.append(_read_entry(off, entry))
        return {
            "messages": messages,
            "next_offset": start + len(messages),
            "high_watermark": part.high_watermark,
            "low_watermark": part.low_watermark,
            "truncated": truncated,
        }

    def _read_partition(self, topic_name: str, partition: int) -> Partition:
        topic = self.topics.get(topic_name)
        if topic is None:
            raise BrokerError("topic_not_found", f"topic {topic_name!r} does not exist")
        p = _int_field(partition, "partition", 0, len(topic.partitions) - 1)
        return topic.partitions[p]

    def high_watermark(self, topic_name: str, partition: int) -> int | None:
        """For long polls: None when the topic or partition does not exist."""
        topic = self.topics.get(topic_name)
        if topic is None or not 0 <= partition < len(topic.partitions):
            return None
        return topic.partitions[partition].high_watermark

    def group_offsets(self, topic_name: str, group: str) -> Result:
        topic = self.topics.get(topic_name)
        if topic is None:
            return error_result("topic_not_found", f"topic {topic_name!r} does not exist")
        committed = topic.groups.get(group, {})
        rows = []
        for p, part in enumerate(topic.partitions):
            c = committed.get(p)
            lag = part.high_watermark - max(part.low_watermark, c or 0)
            assert lag >= 0
            rows.append(
                {"partition": p, "committed": c, "high_watermark": part.high_watermark, "lag": lag}
            )
        return {"topic": topic.name, "group": group, "partitions": rows}

    def list_bindings(self, queue: str) -> list[Result]:
        return self.bindings.list_for(queue)

    def matching_topics(self, pattern: str) -> list[str]:
        """Existing topics matching a subscribe pattern (new ones: use pattern_matches)."""
        cached = self._match_cache.get(pattern)
        if cached is not None and cached[0] == self._names_version:
            return list(cached[1])
        found = [name for name in sorted(self.topics) if pattern_matches(pattern, name)]
        if len(self._match_cache) >= _MATCH_CACHE_MAX:
            self._match_cache.clear()
        self._match_cache[pattern] = (self._names_version, found)
        return list(found)

    # -- snapshot

    def encode(self) -> dict[str, Any]:
        """A msgpack-able object; decode(encode(t)) encodes identically."""
        return {
            "now_ms": self.now_ms,
            "next_topic_uid": self.next_topic_uid,
            "topics": [_encode_topic(t) for t in self.topics.values()],
            "bindings": self.bindings.encode(),
        }

    @classmethod
    def decode(
        cls,
        obj: Any,
        limits: TopicLimits | None = None,
        binding_limits: BindingLimits | None = None,
    ) -> Topics:
        """Raises ValueError on a malformed section."""
        try:
            return cls._decode(obj, limits, binding_limits)
        except (KeyError, TypeError, IndexError, AssertionError, BrokerError) as e:
            raise ValueError(f"topics: malformed snapshot section: {e!r}") from e

    @classmethod
    def _decode(
        cls, obj: Any, limits: TopicLimits | None, binding_limits: BindingLimits | None
    ) -> Topics:
        out = cls(limits, binding_limits)
        out.now_ms = int(obj["now_ms"])
        out.next_topic_uid = int(obj["next_topic_uid"])
        for row in obj["topics"]:
            topic = _decode_topic(row, out.limits)
            assert topic.uid < out.next_topic_uid and topic.name not in out.topics
            out.topics[topic.name] = topic
            for p in range(len(topic.partitions)):
                out._schedule_age(topic, p)
        out.bindings = Bindings.decode(obj["bindings"], binding_limits)
        return out


def _routes(
    topic: str, msg: dict[str, Any], p: int, offset: int, candidates: list[Binding]
) -> list[Route]:
    """(queue, queue message) per bound queue; the queue publish shape of architecture 1.1."""
    if not candidates:
        return []
    queues = route_among(candidates, msg["headers"])
    headers = dict(msg["headers"])
    headers.update({"x-topic": topic, "x-partition": str(p), "x-offset": str(offset)})
    return [(q, _queue_msg(msg["body"], headers)) for q in queues]


def _queue_msg(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "body": body,
        "headers": dict(headers),
        "priority": 0,
        "delay_s": 0,
        "group": None,
        "dedup_id": None,
        "ttl_s": 0,
        "correlation_id": None,
        "reply_to": None,
    }


def _read_entry(offset: int, entry: Entry) -> Result:
    return {
        "offset": offset,
        "key": entry.key,
        "body": entry.body,
        "headers": dict(entry.headers),
        "published_at": entry.published_at,
    }


def _copy_config(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "retention": dict(config["retention"])}


def _encode_topic(t: Topic) -> list[Any]:
    parts = [
        [
            part.low_watermark,
            [
                [e.key, e.body, e.headers, e.published_at]
                for e in part.entries[part.head :]
                if e is not None
            ],
        ]
        for part in t.partitions
    ]
    groups = [[g, [[p, o] for p, o in offs.items()]] for g, offs in t.groups.items()]
    return [t.name, t.uid, t.config, t.rr_next, t.published_total, parts, groups]


def _decode_topic(row: list[Any], limits: TopicLimits) -> Topic:
    name, uid, config, rr_next, published_total, parts, groups = row
    config = validate_topic_config(config, limits)
    topic = Topic(validate_name(name, "topic"), int(uid), config)
    assert len(parts) == config["partitions"]
    for part, (low_watermark, entries) in zip(topic.partitions, parts, strict=True):
        part.low_watermark = part.high_watermark = int(low_watermark)
        for key, body, headers, published_at in entries:
            assert isinstance(body, bytes) and isinstance(headers, dict)
            part.append(
                Entry(key, body, headers, int(published_at), entry_size(key, body, headers))
            )
    topic.rr_next = int(rr_next)
    topic.published_total = int(published_total)
    for group, offsets in groups:
        topic.groups[group] = {int(p): int(o) for p, o in offsets}
    return topic


_HANDLERS: dict[str, Callable[[Topics, dict[str, Any]], Result]] = {
    "topic.create": Topics._create,
    "topic.delete": Topics._delete,
    "binding.create": Topics._binding_create,
    "binding.delete": Topics._binding_delete,
    "group.commit": Topics._group_commit,
}
