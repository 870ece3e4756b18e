"""Long polls wait here: woken after every apply on this node, never by polling a timer."""

from __future__ import annotations

import asyncio


class ApplyNotifier:
    """A broadcast edge: `fire()` wakes every coroutine currently in `wait()`.

    Each generation is one future; `fire()` resolves it and starts the next, so a waiter costs
    one future reference and nothing runs for it until something was applied.
    """

    def __init__(self, waiters_max: int) -> None:
        assert waiters_max > 0
        self.waiters_max = waiters_max
        self.waiters = 0
        self.fired = 0  # applies announced so far: a waiter passes what it saw as `since`
        self._generation: asyncio.Future[None] | None = None

    def fire(self) -> None:
        self.fired += 1
        generation, self._generation = self._generation, None
        if generation is not None and not generation.done():
            generation.set_result(None)

    def full(self) -> bool:
        return self.waiters >= self.waiters_max

    async def wait(self, timeout_s: float, *, since: int | None = None,
                   counted: bool = True) -> bool:
        """Wait until the next apply or the timeout; True if woken by an apply.

        `since`: the `fired` count read before the caller looked at the state; if an apply
        was announced after that (while the caller was awaiting something else), return at
        once instead of sleeping through it (no lost wake-up). Only for loops that do not
        propose themselves (topic long polls, live subscribe): a queue receive's own apply
        would count as news and turn the wait into a loop of proposals.
        `counted` waits are client requests (long polls, streams): they count toward
        `waiters` and the long-poll limit. The node's own background work passes False."""
        if since is not None and since != self.fired:
            return True
        if timeout_s <= 0:
            return False
        if self._generation is None or self._generation.done():
            self._generation = asyncio.get_running_loop().create_future()
        generation = self._generation
        self.waiters += counted
        try:
            await asyncio.wait_for(asyncio.shield(generation), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self.waiters -= counted
