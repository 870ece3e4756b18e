"""What a queued message costs in memory: the 1,000,000-message target (issue 7) rests on it.

Measured with tracemalloc on the pure state: a 256-byte body costs 304 bytes as a Python bytes
object, the message object 112 (10 slots: storage.queues.Msg), its id 32 and its dict slot
about 42; the ready index adds 8 (a FIFO slot holding the id, which is also its position:
storage.queues.ReadyLevel). 471 bytes in all, the same after a snapshot round trip. Before:
621 bytes, and 713 after a snapshot round trip (its ints were no longer shared); 479 with 11
slots (tracemalloc counts the 120 bytes asked for; pymalloc gave 128).
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from collections.abc import Callable

from storage.queues import Msg
from storage.state import BrokerState

T0 = 1_700_000_000_000
MESSAGES = 20_000
BODY_BYTES = 256
BYTES_PER_MESSAGE_MAX = 540  # measured 471 (storage/DESIGN.md, "Memory per queued message")
MSG_OBJECT_BYTES_MAX = 112  # pymalloc's size class for 10 slots; 11 slots take a 128-byte block


def traced_bytes_per_message(build: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept is not None
    return grown / MESSAGES


def filled_state() -> BrokerState:
    state = BrokerState()
    state.apply({"op": "queue.create", "queue": "q", "config": {}}, T0)
    for i in range(MESSAGES // 1000):
        msgs = [{"body": os.urandom(BODY_BYTES), "headers": {}} for _ in range(1000)]
        result = state.apply({"op": "queue.publish", "queue": "q", "messages": msgs}, T0 + i)
        assert "error" not in result, result
    return state


def test_a_queued_256_byte_message_costs_under_the_budget() -> None:
    cost = traced_bytes_per_message(filled_state)
    assert cost <= BYTES_PER_MESSAGE_MAX, f"{cost:.0f} bytes per queued message"


def test_a_state_restored_from_a_snapshot_costs_the_same() -> None:
    snapshot = filled_state().encode_snapshot()
    cost = traced_bytes_per_message(lambda: BrokerState.decode_snapshot(snapshot))
    assert cost <= BYTES_PER_MESSAGE_MAX, f"{cost:.0f} bytes per restored message"


def test_a_message_object_fits_the_112_byte_size_class() -> None:
    """10 slots: with an 11th (a position per message) every message took a 128-byte block."""
    msg = Msg(1, b"x", {}, 0, T0)
    assert sys.getsizeof(msg) <= MSG_OBJECT_BYTES_MAX
