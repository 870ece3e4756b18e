"""Give the C heap's free memory back to the OS: once start-up is done, whenever the process
grew by HEAP_TRIM_GROWTH_BYTES since the last trim, and at least every minute.

glibc's malloc returns memory at the top of a heap only; free chunks below live objects stay
resident. A restart leaves many: the journal read at start-up (up to
`log_compaction_bytes_max` of entries) and the snapshot's decoding are freed among the
objects that stay. Measured on a node restarted with 1,000,000 queued messages: 676 MiB RSS,
556 MiB after `malloc_trim(0)`. A trim of a node holding 1M messages takes 1-2 ms
(`raftmq_heap_trim_seconds_total`: 1.0-2.4 ms for a node's first two trims). CPython's own
small-object arenas are returned by CPython; this is for everything larger. Not glibc (musl,
macOS): `trim()` does nothing.

Writes leave free chunks too: request bodies and Raft entries of ~270 KB each come and go
among the messages that stay. After filling 1,000,000 messages some nodes sat at up to 655 MiB
where others held 561; a trim by hand took two of them from 609 to 587 and 630 to 574 MiB
(docs/benchmarks.md, session 5). Hence the trim on growth, checked every HEAP_TRIM_CHECK_S,
which catches the end of a burst within about a second.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

HEAP_TRIM_INTERVAL_S = 60.0  # at most this long between trims after the start-up one
HEAP_TRIM_CHECK_S = 1.0  # how often the resident size is looked at
HEAP_TRIM_GROWTH_BYTES = 8 * 2**20  # a trim once the process grew this much since the last
READY_POLL_S = 0.1


@dataclass
class TrimStats:
    trims: int = 0
    seconds_total: float = 0.0


_STATS = TrimStats()


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def stats() -> TrimStats:
    return _STATS


def trim() -> bool:
    """Release free heap pages now; False where there is no malloc_trim."""
    if _TRIM is None:
        return False
    start = time.perf_counter()
    _TRIM(0)
    _STATS.trims += 1
    _STATS.seconds_total += time.perf_counter() - start
    return True


def rss_bytes() -> int:
    """This process's resident size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


async def run(is_ready: Callable[[], bool], interval_s: float = HEAP_TRIM_INTERVAL_S, *,
              check_s: float = HEAP_TRIM_CHECK_S, growth_bytes: int = HEAP_TRIM_GROWTH_BYTES,
              resident: Callable[[], int] = rss_bytes) -> None:
    """Trim when the node first becomes ready (start-up's scratch memory is garbage by then),
    then when `resident()` grew by `growth_bytes` since the last trim, or `interval_s` passed
    (looked at every `check_s`). Runs until cancelled."""
    while not is_ready():
        await asyncio.sleep(READY_POLL_S)
    while True:
        if trim():
            log.debug("event=heap_trim trims=%d", _STATS.trims)
        after, last = resident(), time.monotonic()
        while resident() - after < growth_bytes and time.monotonic() - last < interval_s:
            await asyncio.sleep(min(check_s, interval_s))
