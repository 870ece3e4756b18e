"""node/waiters.py: a reader that passes what it saw (`since`) never sleeps through an apply
announced while it was busy elsewhere."""

from __future__ import annotations

import asyncio

from node.waiters import ApplyNotifier


def test_an_apply_announced_before_the_wait_is_not_slept_through() -> None:
    async def scenario() -> None:
        notifier = ApplyNotifier(10)
        seen = notifier.fired
        notifier.fire()  # lands while the reader is, say, writing an event to its client
        woke = await asyncio.wait_for(notifier.wait(30.0, since=seen), 1.0)
        assert woke is True and notifier.waiters == 0

    asyncio.run(scenario())


def test_with_nothing_new_the_wait_sleeps_until_the_next_apply_or_the_timeout() -> None:
    async def scenario() -> None:
        notifier = ApplyNotifier(10)
        seen = notifier.fired
        assert await notifier.wait(0.05, since=seen) is False
        waiter = asyncio.ensure_future(notifier.wait(30.0, since=notifier.fired))
        await asyncio.sleep(0)
        assert not waiter.done() and notifier.waiters == 1
        notifier.fire()
        assert await asyncio.wait_for(waiter, 1.0) is True

    asyncio.run(scenario())
