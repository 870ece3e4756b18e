"""Loop wake-ups of the replica: one per tick of applies, one pipe write per pass over the
submit queue, and never a lost one (replication/replica.py)."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from node.waiters import ApplyNotifier
from replication import Replica, ReplicaConfig
from replication.replica import CoalescingNotifier, _coalesce_submit_wakeups

DEADLINE_S = 10.0
TEST_DEADLINE_S = 60.0


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_DEADLINE_S))

    return wrapper


def config(tmp_path: Path, raft_addr: str = "127.0.0.1:1") -> ReplicaConfig:
    return ReplicaConfig(node_id="n1", raft_addr=raft_addr, peers={}, data_dir=tmp_path)


async def until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def raft_tick(replica: Replica, applied_entries: int) -> None:
    """What pysyncobj's thread does in one tick: apply entries, then run its tick callbacks."""
    for _ in range(applied_entries):
        replica._on_applied()
    replica._announce_applies()


@run_async
async def test_a_tick_that_applies_a_burst_wakes_the_loop_once(tmp_path: Path) -> None:
    replica = Replica(config(tmp_path), asyncio.get_running_loop())
    fired: list[int] = []
    replica.add_apply_listener(lambda: fired.append(1))
    await asyncio.to_thread(raft_tick, replica, 50)
    await asyncio.to_thread(raft_tick, replica, 0)  # a tick that applied nothing: no wake-up
    await until(lambda: fired, "the listener")
    await asyncio.sleep(0.05)  # room for a wrong second call to show up
    assert fired == [1] and replica.listener_wakeups == 1 and replica.listener_fires == 1
    await asyncio.to_thread(raft_tick, replica, 1)  # a later apply is announced again
    await until(lambda: len(fired) == 2, "the second listener call")
    assert replica.listener_wakeups == 2


@run_async
async def test_applies_while_a_wakeup_is_pending_are_seen_by_that_wakeup(tmp_path: Path) -> None:
    replica = Replica(config(tmp_path), asyncio.get_running_loop())
    seen: list[int] = []
    applied = [0]
    replica.add_apply_listener(lambda: seen.append(applied[0]))

    def ticks() -> None:  # the loop is blocked below, so the first wake-up stays pending
        for _ in range(3):
            applied[0] += 5
            raft_tick(replica, 5)

    worker = threading.Thread(target=ticks)
    worker.start()
    worker.join()  # blocks the loop thread on purpose: the fire cannot run in between
    await until(lambda: seen, "the listener")
    assert seen == [15] and replica.listener_wakeups == 1  # the one fire saw every apply


@run_async
async def test_a_long_poll_waiting_on_the_notifier_is_woken_by_a_tick(tmp_path: Path) -> None:
    replica = Replica(config(tmp_path), asyncio.get_running_loop())
    notifier = ApplyNotifier(waiters_max=10)
    replica.add_apply_listener(notifier.fire)
    waiters = [asyncio.create_task(notifier.wait(DEADLINE_S)) for _ in range(3)]
    await until(lambda: notifier.waiters == 3, "the waiters")
    started = time.monotonic()
    await asyncio.to_thread(raft_tick, replica, 20)
    assert await asyncio.gather(*waiters) == [True, True, True]  # woken, not timed out
    assert time.monotonic() - started < DEADLINE_S / 2
    assert replica.listener_wakeups == 1


class FakePipe:
    def __init__(self) -> None:
        self.writes = 0

    def notify(self) -> None:
        self.writes += 1


class FakeSync:
    """The two pysyncobj members the submit coalescing touches, with a real queue."""

    def __init__(self) -> None:
        self._SyncObj__pipeNotifier = FakePipe()
        self.queue: list[int] = []
        self.taken: list[int] = []

    def _applyCommand(self, command: int) -> None:  # noqa: N802 (pysyncobj's name)
        self.queue.append(command)
        self._SyncObj__pipeNotifier.notify()

    def _checkCommandsToApply(self) -> None:  # noqa: N802
        self.taken.extend(self.queue)
        self.queue.clear()


def test_a_burst_of_submits_writes_the_pipe_once_and_every_command_is_taken() -> None:
    sync = FakeSync()
    pipe = sync._SyncObj__pipeNotifier
    notifier = _coalesce_submit_wakeups(sync)
    assert isinstance(notifier, CoalescingNotifier)
    for command in range(10):
        sync._applyCommand(command)
    assert pipe.writes == 1 and notifier.skipped == 9
    sync._checkCommandsToApply()
    assert sync.taken == list(range(10))
    sync._applyCommand(10)  # after the Raft thread's pass: a new write, so it wakes again
    assert pipe.writes == 2
    sync._checkCommandsToApply()
    assert sync.taken == list(range(11))


def test_a_command_queued_during_the_raft_pass_still_gets_a_write() -> None:
    sync = FakeSync()
    pipe = sync._SyncObj__pipeNotifier
    inner_check = sync._checkCommandsToApply

    def check_with_a_racing_submit() -> None:
        inner_check()
        sync._applyCommand(2)  # queued after this pass took the queue

    sync._checkCommandsToApply = check_with_a_racing_submit  # type: ignore[method-assign]
    _coalesce_submit_wakeups(sync)
    sync._applyCommand(1)
    sync._checkCommandsToApply()
    assert sync.taken == [1] and sync.queue == [2]
    assert pipe.writes == 2  # command 2 wrote the pipe: the next poll ends at once


def test_a_syncobj_without_a_pipe_is_left_alone() -> None:
    class NoPipe:
        pass

    assert _coalesce_submit_wakeups(NoPipe()) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@run_async
async def test_a_real_one_node_replica_wakes_a_waiter_and_answers_every_proposal(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, f"127.0.0.1:{free_port()}")
    replica = await Replica.start(cfg)
    try:
        await until(replica.is_ready, "the replica to be ready")
        notifier = ApplyNotifier(waiters_max=10)
        replica.add_apply_listener(notifier.fire)
        waiter = asyncio.create_task(notifier.wait(DEADLINE_S))
        # A late apply (the new leader's first entry) may wake it before we look: fine too.
        await until(lambda: notifier.waiters == 1 or waiter.done(), "the waiter")
        results = await asyncio.gather(*(replica.propose({"op": "noop"}) for _ in range(30)))
        assert results == [{}] * 30
        assert await waiter is True
        stats = replica.stats()
        assert 1 <= stats["listener_wakeups"] <= stats["entries_applied"]
        writes, skipped = stats["submit_pipe_writes"], stats["submit_pipe_writes_skipped"]
        assert writes >= 1 and writes + skipped >= stats["entries_submitted"]
    finally:
        await replica.close()
