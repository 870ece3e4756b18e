"""A queue publish's answer, kept as ids until someone reads it.

Every node applies every publish, but only the node that proposed it answers a client: the
others drop the result. Building `[{"id": "7", "duplicate": False}, ...]` per message on every
node was 10-15 % of a follower's samples at publish b1000 (docs/benchmarks.md, session 5).
`Queues.commit` returns `PublishedIds` instead: the list of answer dicts is built when read
(the node's codec, a transaction splitting its answers, a test comparing). Producers store the
compact form (`packed`), which is what storage/producers.py keeps anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload


class PublishedIds(Sequence[dict[str, Any]]):
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

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return self.to_list()[index]
        return {"id": str(self.ids[index]),
                "duplicate": self.dups[index] if self.dups is not None else False}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.to_list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PublishedIds):
            return self.to_list() == other.to_list()
        if isinstance(other, list):
            return self.to_list() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a list stand-in: unhashable like a list

    def __repr__(self) -> str:
        return repr(self.to_list())


def encode_default(value: Any) -> list[dict[str, Any]]:
    """The `default` hook of an encoder (msgpack, json) for results that hold PublishedIds."""
    if isinstance(value, PublishedIds):
        return value.to_list()
    raise TypeError(f"not serializable: {type(value).__name__}")
