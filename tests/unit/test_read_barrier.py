"""node/barriers.py: concurrent linearizable reads share no-ops, and never one proposed before
they arrived."""

from __future__ import annotations

import asyncio

import pytest

from node.barriers import ReadBarrier


class FakeLog:
    """A barrier function whose no-ops complete when the test says so."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[None]] = []

    async def barrier(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        await fut

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


def test_readers_during_a_flight_share_the_next_no_op_not_the_current_one() -> None:
    async def scenario() -> None:
        log = FakeLog()
        barrier = ReadBarrier(log.barrier)
        first = asyncio.ensure_future(barrier.wait())
        await log.settle()
        assert len(log.pending) == 1
        late = [asyncio.ensure_future(barrier.wait()) for _ in range(50)]
        await log.settle()
        log.pending[0].set_result(None)
        await log.settle()
        assert first.done() and not any(r.done() for r in late), \
            "a reader that arrived during a flight must wait for a later no-op"
        assert len(log.pending) == 2, "the 50 late readers share one new no-op"
        log.pending[1].set_result(None)
        await asyncio.gather(*late)
        assert barrier.proposed == 2

    asyncio.run(scenario())


def test_a_failed_no_op_fails_its_readers_and_the_next_round_starts_fresh() -> None:
    async def scenario() -> None:
        log = FakeLog()
        barrier = ReadBarrier(log.barrier)
        readers = [asyncio.ensure_future(barrier.wait()) for _ in range(3)]
        await log.settle()
        log.pending[0].set_exception(TimeoutError("no leader"))
        for reader in readers:
            with pytest.raises(TimeoutError):
                await reader
        again = asyncio.ensure_future(barrier.wait())
        await log.settle()
        assert len(log.pending) == 2
        log.pending[1].set_result(None)
        await again

    asyncio.run(scenario())


def test_a_reader_that_gives_up_does_not_cancel_the_others() -> None:
    async def scenario() -> None:
        log = FakeLog()
        barrier = ReadBarrier(log.barrier)
        quitter = asyncio.ensure_future(barrier.wait())
        stayer = asyncio.ensure_future(barrier.wait())
        await log.settle()
        quitter.cancel()
        await log.settle()
        log.pending[0].set_result(None)
        await stayer
        assert quitter.cancelled() and barrier.proposed == 1

    asyncio.run(scenario())
