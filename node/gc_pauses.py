"""Full garbage collections must not outlast the Raft election timeout.

A node holding a million queued messages holds a million objects the cycle collector tracks.
CPython's full (generation 2) collection walks all of them with the GIL held, so the Raft
thread cannot send heartbeats meanwhile: 0.5-1.2 s per collection while a 2-core host was
busy, against an election timeout of 0.4-1.4 s. Followers elected a new leader during every
million-message fill (`raftmq bench publish -b 1000 -c 8 -n 1000000 --target all`: 3 elections,
docs/benchmarks.md "Operational targets"), and those collections freed nothing: messages
form no reference cycles, reference counting frees them when they are acked.

The policy: after a full collection that took longer than `GC_FREEZE_AFTER_S`, every object
that survived it moves to the permanent generation (`gc.freeze()`), so later full collections
walk only what arrived since. Nothing collectable is frozen (the collection just ran), and a
frozen object is still freed by reference counting; the cost is that a reference cycle among
frozen objects that later becomes garbage stays in memory. Freezes only follow a slow
collection: a large heap, or a host so loaded that even a small heap passes 50 ms (campaign 10
saw 26 on heaps of about 50,000 objects). `/metrics` shows them:
`raftmq_gc_full_collection_seconds`, `raftmq_gc_freezes_total`, `raftmq_gc_frozen_objects`.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GC_FREEZE_AFTER_S = 0.05  # a full collection slower than this freezes its survivors


@dataclass
class GcStats:
    freeze_after_s: float = GC_FREEZE_AFTER_S
    full_collections: int = 0
    freezes: int = 0
    observers: list[Any] = field(default_factory=list)  # called with each full collection's s
    _started: float = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if info.get("generation") != 2:
            return
        took_s = time.perf_counter() - self._started
        self.full_collections += 1
        for observe in self.observers:
            observe(took_s)
        if took_s > self.freeze_after_s:
            gc.freeze()
            self.freezes += 1
            log.info("event=gc_freeze full_collection_ms=%d collected=%s frozen_objects=%d",
                     took_s * 1000, info.get("collected"), gc.get_freeze_count())


_STATS = GcStats()
_installed = False


def stats() -> GcStats:
    """This process's counters (zero until `install`)."""
    return _STATS


def install(freeze_after_s: float = GC_FREEZE_AFTER_S) -> GcStats:
    """Install the policy once per process (idempotent); its stats."""
    global _installed
    _STATS.freeze_after_s = freeze_after_s
    if not _installed:
        gc.callbacks.append(_STATS.callback)
        _installed = True
    return _STATS


def uninstall() -> None:
    """Remove the policy (tests) and thaw what it froze."""
    global _installed
    if _installed:
        gc.callbacks.remove(_STATS.callback)
        _installed = False
    gc.unfreeze()
