"""The client's idempotent producer: register once, attach `{id, epoch, seq}`, retry safely.

One request in flight per producer (an asyncio.Lock): seqs must reach the leader in order, and
pipelining them would turn a lost request into `out_of_order_sequence` for all that follow.
For parallel publishing use several clients (each has its own producer).

Rules (docs/client.md, "Exactly-once"):
* a request is retried with THE SAME seq on a 503, a 504, a timeout or a dropped connection
  until it is answered or the deadline passes; `duplicate: true` is success (same ids);
* a request answered with an error (4xx) applied nothing: its seq is skipped; if the node
  answers `out_of_order_sequence` expecting one of the skipped seqs, we resend with that seq;
* a request that ends with its outcome unknown (deadline passed) makes the next request
  register the producer again first: the new epoch fences the lost request, so it is applied
  before the registration or never, not later behind our back;
* `producer_unknown` (expired or evicted): register again and resend with seq 0;
* `producer_fenced`: raised. If our own registration had an unknown outcome (a late copy of it
  may be what fenced us), the NEXT request registers again; otherwise the producer stays fenced.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from raftmq._http import Transport
from raftmq.errors import OutOfOrderSequence, ProducerFenced, ProducerUnknown, RaftmqError
from raftmq.models import ProducerRef

RETRIES_UNBOUNDED = 1 << 30
_EXPECTED_RE = re.compile(r"expected(?:\s+seq)?\D{0,5}(\d+)", re.IGNORECASE)


class Producer:
    def __init__(self, transport: Transport, producer_id: str | None = None) -> None:
        self._transport = transport
        self._wanted_id = producer_id
        self.ref: ProducerRef | None = None
        self._lock = asyncio.Lock()
        self._skipped_from: int | None = None   # first seq of a run of seqs answered with errors
        self._fence_first = False               # last request's outcome unknown: re-register
        self._register_unknown = False          # our registration had an unknown outcome

    async def register(self) -> ProducerRef:
        """Register (or re-register, bumping the epoch) and start at seq 0."""
        body = {"id": self._wanted_id} if self._wanted_id else {}
        try:
            data = await self._transport.call("POST", "/v1/producers", body)
        except RaftmqError as exc:
            self._register_unknown = exc.outcome_unknown
            raise
        assert isinstance(data, dict) and "epoch" in data, data
        self._wanted_id = str(data["id"])
        self.ref = ProducerRef(self._wanted_id, int(data["epoch"]), 0)
        self._skipped_from = None
        self._fence_first = False
        return self.ref

    async def send(self, path: str, build: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
        """POST `build(producer)` to `path` exactly once (see the module rules)."""
        async with self._lock:
            if self.ref is None or self._fence_first:
                self._register_unknown = False
                await self.register()
            reregistered = False
            while True:
                ref = self.ref
                assert ref is not None
                try:
                    data = await self._transport.call("POST", path, build(ref.as_api()),
                                                      retries=RETRIES_UNBOUNDED)
                except ProducerUnknown:
                    if reregistered:
                        raise
                    reregistered = True
                    await self.register()
                    continue
                except RaftmqError as exc:
                    if self._recover(exc, ref):
                        continue
                    raise
                self._advance(ref)
                return data

    def _advance(self, ref: ProducerRef) -> None:
        self.ref = ProducerRef(ref.id, ref.epoch, ref.seq + 1)
        self._skipped_from = None

    def _recover(self, exc: RaftmqError, ref: ProducerRef) -> bool:
        """Decide after an error: True to resend (self.ref updated), False to raise `exc`."""
        if exc.outcome_unknown:
            self._fence_first = True
            return False
        if isinstance(exc, OutOfOrderSequence):
            expected = expected_seq(exc)
            floor = self._skipped_from
            if expected is not None and floor is not None and floor <= expected < ref.seq:
                self.ref = ProducerRef(ref.id, ref.epoch, expected)
                self._skipped_from = None if expected == floor else floor
                return True
            return False
        if isinstance(exc, ProducerFenced):
            if self._register_unknown:
                self._register_unknown = False
                self._fence_first = True
            return False
        if self._skipped_from is None:
            self._skipped_from = ref.seq
        self.ref = ProducerRef(ref.id, ref.epoch, ref.seq + 1)
        return False


def expected_seq(exc: RaftmqError) -> int | None:
    """The seq an `out_of_order_sequence` error expects: a detail field, else the message."""
    for key in ("expected_seq", "expected"):
        value = exc.details.get(key)
        if isinstance(value, int):
            return value
    match = _EXPECTED_RE.search(exc.message)
    return int(match.group(1)) if match else None
