"""node/heap_trim.py: free C heap goes back to the OS once start-up is done, then periodically."""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

import pytest

from node import heap_trim


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_trim_returns_freed_chunks_below_live_ones() -> None:
    """The situation a restart leaves: large blocks freed beneath a block that stays."""
    if heap_trim._TRIM is None:
        pytest.skip("no glibc malloc_trim on this system")
    blocks = [ctypes.create_string_buffer(64 * 1024) for _ in range(2000)]  # ~128 MiB
    for b in blocks:
        ctypes.memset(b, 1, len(b))
    pin = ctypes.create_string_buffer(64 * 1024)  # allocated above them: the top stays in use
    del blocks
    before = rss_bytes()
    assert heap_trim.trim()
    assert before - rss_bytes() > 64 << 20, "the freed blocks went back to the OS"
    assert pin.raw  # kept alive across the trim


def test_run_trims_once_ready_then_every_interval() -> None:
    ready = [False]
    start = heap_trim.stats().trims

    async def scenario() -> int:
        task = asyncio.get_running_loop().create_task(heap_trim.run(lambda: ready[0], 0.01))
        await asyncio.sleep(3 * heap_trim.READY_POLL_S)
        assert heap_trim.stats().trims == start, "nothing before the node is ready"
        ready[0] = True
        deadline = asyncio.get_running_loop().time() + 10
        while heap_trim.stats().trims < start + 3:
            assert asyncio.get_running_loop().time() < deadline, "no periodic trims"
            await asyncio.sleep(0.01)
        task.cancel()
        return heap_trim.stats().trims

    if heap_trim._TRIM is None:
        pytest.skip("no glibc malloc_trim on this system")
    assert asyncio.run(scenario()) >= start + 3


def test_run_trims_when_the_process_grew_and_not_while_it_stays_put() -> None:
    """A burst of writes leaves free chunks among the messages that stay: a trim follows it
    (within a check period), and a quiet node is not trimmed again until the interval."""
    size = [1000]
    start = heap_trim.stats().trims

    async def scenario() -> tuple[int, int, int]:
        task = asyncio.get_running_loop().create_task(heap_trim.run(
            lambda: True, 3600, check_s=0.01, growth_bytes=100, resident=lambda: size[0]))
        await until(lambda: heap_trim.stats().trims == start + 1)  # the start-up trim
        size[0] += 99  # below the growth threshold
        await asyncio.sleep(0.1)
        below = heap_trim.stats().trims
        size[0] += 1  # 100 grown since that trim
        await until(lambda: heap_trim.stats().trims == start + 2)
        await asyncio.sleep(0.1)
        quiet = heap_trim.stats().trims
        task.cancel()
        return below, quiet, heap_trim.stats().trims

    async def until(predicate: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, "no trim"
            await asyncio.sleep(0.005)

    if heap_trim._TRIM is None:
        pytest.skip("no glibc malloc_trim on this system")
    below, quiet, end = asyncio.run(scenario())
    assert below == start + 1, "99 bytes of growth are not enough"
    assert quiet == end == start + 2, "no trims while the size stays put"
