"""Answers kept compact until someone reads them: a queue publish's ids, a receive's deliveries.

Every node applies every command, but only the node that proposed it answers a client: the
others drop the result. Building `[{"id": "7", "duplicate": False}, ...]` per published
message on every node was 10-15 % of a follower's samples at publish b1000, and a receive's
per-message view dicts cost receive + ack 2.6 against 1.8 us/msg in the state machine alone
(docs/benchmarks.md, session 5). The state machine returns a `LazyList` instead: the list of
dicts is built when read (the node's codec through `encode_default`, a transaction splitting
its answers, a long poll looking at it, a test comparing). Producers store a publish's compact
form (`PublishedIds.packed`), which is what storage/producers.py keeps anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload


class LazyList(Sequence[dict[str, Any]]):
    """Reads, slices and compares like the list of dicts `to_list()` builds; unhashable."""

    __slots__ = ()

    def to_list(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def item(self, index: int) -> dict[str, Any]:
        return self.to_list()[index]

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return self.to_list()[index]
        return self.item(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.to_list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyList):
            return self.to_list() == other.to_list()
        if isinstance(other, list):
            return self.to_list() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a list stand-in: unhashable like a list

    def __repr__(self) -> str:
        return repr(self.to_list())


class PublishedIds(LazyList):
    """Reads like `[{"id": str(id), "duplicate": dup}, ...]`; compares equal to that list."""

    __slots__ = ("ids", "dups")

    def __init__(self, ids: list[int], dups: list[bool] | None = None) -> None:
        assert dups is None or len(dups) == len(ids)
        self.ids = ids
        self.dups = dups  # None: none is a duplicate (the usual publish)

    def to_list(self) -> list[dict[str, Any]]:
        if self.dups is None:
            return [{"id": str(i), "duplicate": False} for i in self.ids]
        return [{"id": str(i), "duplicate": d} for i, d in zip(self.ids, self.dups, strict=True)]

    def packed(self) -> dict[str, Any]:
        """storage/producers.py's stored form of a queue answer's messages."""
        ids = self.ids
        if self.dups is None and ids and ids == list(range(ids[0], ids[0] + len(ids))):
            return {"range": [ids[0], len(ids)]}
        return {"ids": list(ids), "dups": list(self.dups or [False] * len(ids))}

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, index: int) -> dict[str, Any]:
        return {"id": str(self.ids[index]),
                "duplicate": self.dups[index] if self.dups is not None else False}


Delivery = tuple[Any, dict[str, str], int, int | None, int | None]
"""A delivered message as taken at apply time: (Msg, its headers, its receive count, the
delivery number or None (auto-ack), the lease deadline or None). The rest of a Msg never
changes after it is published."""


def message_view(msg: Any, headers: dict[str, str], receive_count: int) -> dict[str, Any]:
    """A message as the API shows it (storage.queues.Queue.view, deliveries)."""
    return {"id": str(msg.id), "body": msg.body, "headers": headers or {},
            "priority": msg.priority, "group": msg.group,
            "correlation_id": msg.correlation_id, "reply_to": msg.reply_to,
            "published_at": msg.published_at, "receive_count": receive_count}


def delivered_view(row: Delivery) -> dict[str, Any]:
    msg, headers, receive_count, delivery, lease_ms = row
    view = message_view(msg, headers, receive_count)
    view["receipt"] = None if delivery is None else f"{msg.id}.{delivery}"
    view["lease_expires_at"] = lease_ms
    return view


class Deliveries(LazyList):
    """A receive's `messages`: [{"id", "body", ..., "receipt", "lease_expires_at"}, ...]."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Delivery]) -> None:
        self.rows = rows

    def to_list(self) -> list[dict[str, Any]]:
        return [delivered_view(row) for row in self.rows]

    def item(self, index: int) -> dict[str, Any]:
        return delivered_view(self.rows[index])

    def __len__(self) -> int:
        return len(self.rows)


def encode_default(value: Any) -> list[dict[str, Any]]:
    """The `default` hook of an encoder (msgpack, json) for results that hold a LazyList."""
    if isinstance(value, LazyList):
        return value.to_list()
    raise TypeError(f"not serializable: {type(value).__name__}")
