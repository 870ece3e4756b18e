"""Read barriers shared by concurrent readers.

A `linearizable` read puts a no-op through the Raft log and answers once this node has applied
it. Readers that arrive while a no-op is in flight cannot reuse it (it was proposed before they
arrived, so it may be ordered before a write they saw acknowledged); they join the *next* one,
proposed as soon as the current one completes. So a node never has more than one barrier in
flight and one gathering readers, whatever the read rate: the cost is one log entry per Raft
round trip, not one per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class ReadBarrier:
    """Coalesces barrier() calls: every caller waits for a no-op proposed after it arrived."""

    def __init__(self, barrier: Callable[[], Awaitable[None]]) -> None:
        self._barrier = barrier
        self._next: asyncio.Future[None] | None = None  # gathering readers, not yet proposed
        self._task: asyncio.Task[None] | None = None
        self.proposed = 0  # no-ops proposed (metrics: raftmq_read_barriers_total)
        self.waits = 0  # reads that waited for one (raftmq_reads_linearizable_total)

    async def wait(self) -> None:
        self.waits += 1
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieve)
        joined = self._next
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.shield(joined)  # one reader giving up must not fail the others

    async def _run(self) -> None:
        try:
            while self._next is not None:
                current, self._next = self._next, None
                self.proposed += 1
                try:
                    await self._barrier()
                except Exception as exc:  # every reader of this round sees the failure
                    current.set_exception(exc)
                else:
                    current.set_result(None)
        finally:
            self._task = None
        assert self._next is None


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a failure as seen even when every waiter gave up (no 'never retrieved' noise)."""
    if not fut.cancelled():
        fut.exception()
