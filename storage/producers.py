"""Idempotent producers (API.md "Exactly-once"): ids, epochs, sequence numbers. Pure.

A producer is registered (`register`) and then tags each publish with {id, epoch, seq}:

* seq == last + 1: apply, and remember the result (the last `producer_seq_window` of them);
* seq already applied, still in the window: answer the stored result with duplicate: true,
  apply nothing;
* any other seq: `out_of_order_sequence`, naming `expected_seq`;
* an older epoch: `producer_fenced`; an unknown, expired or evicted id (or an epoch the state
  never issued): `producer_unknown` -- register again.

A command that fails (an error result) does not consume its seq, so the same seq can be
retried (storage/DESIGN.md). Producers idle for `producer_idle_expiry_s` of command time
expire; at most `producers_max` exist, the least recently used evicted first. The table is a
dict kept in least-recently-used order, so expiry and eviction cost O(removed).
"""

from __future__ import annotations

import copy
import operator
from collections import deque
from typing import Any

from storage.answers import PublishedIds
from storage.errors import BrokerError
from storage.limits import DEFAULT_LIMITS, Limits
from storage.queues import s_to_ms


class Producer:
    __slots__ = ("epoch", "last_seq", "results", "last_used_ms")

    def __init__(self, epoch: int, now_ms: int) -> None:
        self.epoch = epoch
        self.last_seq = -1
        self.results: deque[tuple[int, dict[str, Any]]] = deque()
        self.last_used_ms = now_ms


class Producers:
    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.table: dict[str, Producer] = {}  # least recently used first
        self.next_id = 1
        self.evicted_total = 0
        self.expired_total = 0
        # The highest epoch any expired or evicted producer had. A producer registered anew
        # starts above it, so a zombie still sending with an old epoch of a re-registered id
        # is fenced, never taken for the new producer's seq 0.
        self.epoch_floor = 0

    def __len__(self) -> int:
        return len(self.table)

    def _touch(self, pid: str, p: Producer, now_ms: int) -> None:
        p.last_used_ms = now_ms
        del self.table[pid]
        self.table[pid] = p  # to the most recently used end

    def register(self, pid: str | None, now_ms: int) -> dict[str, Any]:
        """Register a new producer (epoch 1) or bump an existing one's epoch (fencing)."""
        if pid is None:
            pid = self._new_id()
        existing = self.table.get(pid)
        if existing is not None:
            p = Producer(existing.epoch + 1, now_ms)
            del self.table[pid]
        else:
            if len(self.table) >= self.limits.producers_max:
                self._evict_oldest()
            p = Producer(self.epoch_floor + 1, now_ms)
        self.table[pid] = p
        assert len(self.table) <= self.limits.producers_max
        return {"id": pid, "epoch": p.epoch}

    def _new_id(self) -> str:
        while True:
            pid = f"p-{self.next_id}"
            self.next_id += 1
            if pid not in self.table:
                return pid

    def _evict_oldest(self) -> None:
        oldest = next(iter(self.table))
        self._forget(oldest)
        self.evicted_total += 1

    def _forget(self, pid: str) -> None:
        self.epoch_floor = max(self.epoch_floor, self.table.pop(pid).epoch)

    def check(self, ref: dict[str, Any], now_ms: int) -> dict[str, Any] | None:
        """None: apply the command. A dict: the stored duplicate answer. Raises on refusal."""
        pid, epoch, seq = ref["id"], ref["epoch"], ref["seq"]
        p = self.table.get(pid)
        if p is None:
            raise BrokerError("producer_unknown", f"producer.id: {pid!r} is unknown, expired "
                                                  "or evicted; register it again")
        if epoch < p.epoch:
            raise BrokerError("producer_fenced", f"producer.epoch: {epoch} is fenced by "
                                                 f"epoch {p.epoch}", current_epoch=p.epoch)
        if epoch > p.epoch:
            raise BrokerError("producer_unknown", f"producer.epoch: {epoch} was never issued "
                                                  f"(current {p.epoch}); register again")
        self._touch(pid, p, now_ms)
        expected = p.last_seq + 1
        if seq == expected:
            return None
        if seq < expected:
            for old_seq, result in p.results:
                if old_seq == seq:
                    return _as_duplicate(result)
        raise BrokerError("out_of_order_sequence",
                          f"producer.seq: {seq} is out of order, expected {expected}",
                          expected_seq=expected)

    def record(self, ref: dict[str, Any], result: dict[str, Any], now_ms: int) -> None:
        p = self.table[ref["id"]]
        assert ref["seq"] == p.last_seq + 1 and ref["epoch"] == p.epoch
        p.last_seq = ref["seq"]
        p.results.append((ref["seq"], pack_result(result)))
        while len(p.results) > self.limits.producer_seq_window:
            p.results.popleft()
        p.last_used_ms = now_ms

    def expire(self, now_ms: int) -> None:
        """Drop producers idle for producer_idle_expiry_s: O(expired)."""
        idle_ms = s_to_ms(self.limits.producer_idle_expiry_s)
        while self.table:
            pid = next(iter(self.table))
            if self.table[pid].last_used_ms + idle_ms > now_ms:
                break
            self._forget(pid)
            self.expired_total += 1

    # ----- snapshot
    def encode(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "evicted_total": self.evicted_total,
            "expired_total": self.expired_total,
            "epoch_floor": self.epoch_floor,
            "table": [[pid, p.epoch, p.last_seq, p.last_used_ms,
                       [[s, r] for s, r in p.results]] for pid, p in self.table.items()],
        }

    @classmethod
    def decode(cls, obj: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Producers:
        out = cls(limits)
        out.next_id = obj["next_id"]
        out.evicted_total = obj["evicted_total"]
        out.expired_total = obj["expired_total"]
        out.epoch_floor = obj.get("epoch_floor", 0)
        for pid, epoch, last_seq, last_used_ms, results in obj["table"]:
            p = Producer(epoch, last_used_ms)
            p.last_seq = last_seq
            p.results = deque((s, r) for s, r in results)
            out.table[pid] = p
        return out


def _as_duplicate(result: dict[str, Any]) -> dict[str, Any]:
    dup = unpack_result(result)
    dup["duplicate"] = True
    for m in dup.get("messages") or []:
        if isinstance(m, dict):
            m["duplicate"] = True
    return dup


# ----- compact stored results
#
# A producer keeps up to producer_seq_window results; a result of a 1,000-message batch is
# 1,000 small dicts (~250 bytes each), so 1,000 of them would cost ~250 MB per producer. The
# message lists are stored packed instead: consecutive new queue ids as [first, count], other
# id lists and topic (partition, offset) pairs as flat int lists. unpack(pack(r)) == r.

_QUEUE_KEYS = ("id", "duplicate")
_TOPIC_KEYS = ("partition", "offset", "duplicate")


def pack_result(result: dict[str, Any]) -> dict[str, Any]:
    """The stored form: shares nothing mutable with `result` (which goes to the client), so
    it never changes after it is stored. The message lists, the bulk of a result, are rebuilt
    compact instead of deep-copied first (a deepcopy per publish cost more than the publish)."""
    packed = {key: _packed_value(key, value) for key, value in result.items()}
    assert packed.keys() == result.keys()
    return packed


def _packed_value(key: str, value: Any) -> Any:
    if isinstance(value, PublishedIds):
        return value.packed() if value else []
    if key == "messages" and isinstance(value, list) and value:
        compact = _pack_messages(value)
        if compact is not None:
            return compact
    elif key == "publish" and isinstance(value, list):  # transactions: a list per part
        return [{k: _packed_value(k, v) for k, v in part.items()} if isinstance(part, dict)
                else copy.deepcopy(part) for part in value]
    return value if isinstance(value, _IMMUTABLE) else copy.deepcopy(value)


_IMMUTABLE = (str, bytes, int, float, bool, type(None))


def unpack_result(packed: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(packed)
    if isinstance(result.get("messages"), dict):
        result["messages"] = _unpack_messages(result["messages"])
    for part in result.get("publish") or []:
        if isinstance(part, dict) and isinstance(part.get("messages"), dict):
            part["messages"] = _unpack_messages(part["messages"])
    return result


def _pack_messages(msgs: list[Any]) -> dict[str, Any] | None:
    first = _id_range_start(msgs)
    if first is not None:
        return {"range": [first, len(msgs)]}
    return _pack_message_list(msgs)


def _id_range_start(msgs: list[Any]) -> int | None:
    """The first id when msgs are consecutive new queue ids (the common publish), else None.
    Exact: unpacking the range gives a list equal to msgs."""
    try:
        ids = list(map(_get_id, msgs))
        dups = list(map(_get_dup, msgs))
    except (KeyError, TypeError):
        return None
    head = ids[0]
    if type(head) is not str or not head.isdigit() or str(int(head)) != head:
        return None
    first = int(head)
    if ids != list(map(str, range(first, first + len(ids)))) or any(dups):
        return None
    if any(len(m) != 2 for m in msgs):  # keys exactly id and duplicate
        return None
    return first


_get_id = operator.itemgetter("id")
_get_dup = operator.itemgetter("duplicate")


def _pack_message_list(msgs: list[Any]) -> dict[str, Any] | None:
    if all(isinstance(m, dict) and tuple(m) == _QUEUE_KEYS and isinstance(m["id"], str)
           and m["id"].isdigit() and str(int(m["id"])) == m["id"] for m in msgs):
        ids = [int(m["id"]) for m in msgs]
        dups = [bool(m["duplicate"]) for m in msgs]
        if not any(dups) and ids == list(range(ids[0], ids[0] + len(ids))):
            return {"range": [ids[0], len(ids)]}
        return {"ids": ids, "dups": dups}
    if all(isinstance(m, dict) and tuple(m) == _TOPIC_KEYS for m in msgs):
        return {"po": [x for m in msgs for x in (m["partition"], m["offset"])],
                "dups": [bool(m["duplicate"]) for m in msgs]}
    return None


def _unpack_messages(c: dict[str, Any]) -> list[dict[str, Any]]:
    if "range" in c:
        first, n = c["range"]
        return [{"id": str(i), "duplicate": False} for i in range(first, first + n)]
    if "ids" in c:
        return [{"id": str(i), "duplicate": d} for i, d in zip(c["ids"], c["dups"], strict=True)]
    it = iter(c["po"])
    return [{"partition": p, "offset": o, "duplicate": d}
            for (p, o), d in zip(zip(it, it, strict=True), c["dups"], strict=True)]
