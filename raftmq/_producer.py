"""The client's idempotent producer: register once, attach `{id, epoch, seq}`, retry safely.

One request in flight per producer (an asyncio.Lock): seqs must reach the leader in order, and
pipelining them would turn a lost request into `out_of_order_sequence` for all that follow.
For parallel publishing use several clients (each has its own producer).

Rules (docs/client.md, "Exactly-once"):
* a request is retried with THE SAME seq on a 503, a 504, a timeout or a dropped connection
  until it is answered or the deadline passes; `duplicate: true` is success (same ids);
* a request answered with an error (4xx) applied nothing and did not consume its seq
  (storage/producers.py): the next request reuses that seq;
* a request that ends with its outcome unknown (deadline passed) makes the next request
  register the producer again first: the new epoch fences the lost request, so it is applied
  before the registration or never, not later behind our back;
* `producer_unknown` (expired or evicted): register again and resend with seq 0;
* `producer_fenced`: raised. If our own registration had an unknown outcome (a late copy of it
  may be what fenced us), the NEXT request registers again; otherwise the producer stays fenced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from raftmq._http import Transport
from raftmq.errors import ProducerFenced, ProducerUnknown, RaftmqError
from raftmq.models import ProducerRef

RETRIES_UNBOUNDED = 1 << 30


class Producer:
    def __init__(self, transport: Transport, producer_id: str | None = None) -> None:
        self._transport = transport
        self._wanted_id = producer_id
        self.ref: ProducerRef | None = None
        self._lock = asyncio.Lock()
        self._fence_first = False               # last request's outcome unknown: re-register
        self._register_unknown = False          # our registration had an unknown outcome

    async def register_now(self) -> ProducerRef:
        async with self._lock:
            return await self.register()

    async def register(self) -> ProducerRef:
        """Register (or re-register, bumping the epoch) and start at seq 0. Lock held."""
        body = {"id": self._wanted_id} if self._wanted_id else {}
        try:
            data, unknown = await self._transport.call_info("POST", "/v1/producers", body)
        except RaftmqError as exc:
            self._register_unknown = exc.outcome_unknown
            raise
        self._register_unknown = unknown
        assert isinstance(data, dict) and "epoch" in data, data
        self._wanted_id = str(data["id"])
        self.ref = ProducerRef(self._wanted_id, int(data["epoch"]), 0)
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
                except ProducerUnknown as exc:
                    if reregistered or exc.outcome_unknown:
                        # An earlier attempt of this very request had an unknown outcome: it
                        # may have been applied before the producer was forgotten, so sending
                        # it again under a new epoch could apply it twice. Tell the caller.
                        self._after_error(exc)
                        raise
                    reregistered = True
                    await self.register()
                    continue
                except RaftmqError as exc:
                    self._after_error(exc)
                    raise
                self.ref = ProducerRef(ref.id, ref.epoch, ref.seq + 1)
                return data

    def _after_error(self, exc: RaftmqError) -> None:
        """An error ends this request; its seq stays ours (an error result consumes no seq)."""
        if exc.outcome_unknown:
            self._fence_first = True
        elif isinstance(exc, ProducerFenced) and self._register_unknown:
            self._register_unknown = False
            self._fence_first = True
