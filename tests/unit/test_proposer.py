"""Group commit, result routing, failure mapping and deadlines of the Proposer (no Raft).

A fake `submit` stands in for pysyncobj: it records each entry and the test decides when and how
its callback fires (from another thread, as pysyncobj does).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import msgpack
import pytest
from pysyncobj import FAIL_REASON

from replication.proposer import (
    ENTRY_HEADER_BYTES_MAX,
    Proposer,
    array_header,
    build_entry,
    pack_command,
    unpack_entry,
)
from replication.types import ProposalError

Callback = Callable[[Any, int], None]


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper


class FakeRaft:
    """Collects submitted entries; answers them on demand from a foreign thread."""

    def __init__(self) -> None:
        self.entries: list[tuple[bytes, Callback]] = []

    def submit(self, blob: bytes, callback: Callback) -> None:
        self.entries.append((blob, callback))

    def commands(self, i: int) -> list[Any]:
        return unpack_entry(self.entries[i][0])[1]

    def answer(self, i: int, fail_reason: int = FAIL_REASON.SUCCESS) -> None:
        blob, callback = self.entries[i]
        _, cmds = unpack_entry(blob)
        result = [{"echo": c["k"]} for c in cmds] if fail_reason == FAIL_REASON.SUCCESS else None
        t = threading.Thread(target=callback, args=(result, fail_reason))
        t.start()
        t.join()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def make(raft: FakeRaft, **kw: Any) -> Proposer:
    return Proposer(asyncio.get_running_loop(), raft.submit, clock_ms=lambda: 1_700_000_000_000,
                    **kw)


def test_entry_blob_is_plain_msgpack_of_now_and_commands() -> None:
    for count in (1, 15, 16, 65_535, 65_536):
        assert array_header(count) == msgpack.packb([None] * count)[: len(array_header(count))]
    cmds = [{"op": "queue.publish", "body": b"\x00\xff", "n": i} for i in range(20)]
    blob = build_entry(1_700_000_000_123, [pack_command(c) for c in cmds])
    assert msgpack.unpackb(blob, raw=False) == [1_700_000_000_123, cmds]
    assert unpack_entry(blob) == (1_700_000_000_123, cmds)
    with pytest.raises(ValueError):
        unpack_entry(msgpack.packb({"not": "an entry"}))


@run_async
async def test_concurrent_proposals_share_entries_and_each_gets_its_own_result() -> None:
    raft = FakeRaft()
    proposer = make(raft, window_entries_max=2)
    tasks = []
    for i in range(2):  # one at a time: each goes out at once in its own entry
        tasks.append(asyncio.ensure_future(proposer.propose({"k": i})))
        await settle()
    assert len(raft.entries) == 2  # the window is full now
    tasks += [asyncio.ensure_future(proposer.propose({"k": i})) for i in range(2, 100)]
    await settle()
    assert len(raft.entries) == 2  # what arrives meanwhile waits for a free slot
    raft.answer(0)
    await settle()
    assert len(raft.entries) == 3  # the freed slot carries all the rest in one entry
    assert len(raft.commands(2)) == 98
    raft.answer(1)
    raft.answer(2)
    results = await asyncio.gather(*tasks)
    assert results == [{"echo": i} for i in range(100)]
    packed = [c["k"] for i in range(len(raft.entries)) for c in raft.commands(i)]
    assert packed == list(range(100))  # submission order is proposal order
    assert proposer.stats.commands_submitted == 100 and proposer.stats.entries_submitted == 3


@run_async
async def test_entries_respect_the_byte_limit_and_a_huge_command_goes_alone() -> None:
    raft = FakeRaft()
    limit = 2_000
    proposer = make(raft, entry_bytes_max=limit, window_entries_max=100)
    small = [asyncio.ensure_future(proposer.propose({"k": i, "pad": "x" * 300})) for i in range(10)]
    huge = asyncio.ensure_future(proposer.propose({"k": "huge", "pad": "y" * 5_000}))
    await settle()
    sizes = [len(blob) for blob, _ in raft.entries]
    assert all(size <= limit for size in sizes[:-1]), sizes
    assert raft.commands(len(raft.entries) - 1) == [{"k": "huge", "pad": "y" * 5_000}]
    assert sizes[-1] > limit and sizes[-1] <= 5_000 + 50 + ENTRY_HEADER_BYTES_MAX
    assert sum(len(raft.commands(i)) for i in range(len(raft.entries))) == 11
    for i in range(len(raft.entries)):
        raft.answer(i)
    await asyncio.gather(*small, huge)


@pytest.mark.parametrize(
    ("fail_reason", "code", "applied"),
    [
        (FAIL_REASON.QUEUE_FULL, "unavailable", False),
        (FAIL_REASON.MISSING_LEADER, "no_leader", False),
        (FAIL_REASON.DISCARDED, "unavailable", False),
        (FAIL_REASON.NOT_LEADER, "no_leader", False),
        (FAIL_REASON.LEADER_CHANGED, "commit_timeout", None),
        (FAIL_REASON.UNKNOWN_OUTCOME, "commit_timeout", None),
    ],
)
@run_async
async def test_pysyncobj_failures_map_to_applied_or_unknown(
        fail_reason: int, code: str, applied: bool | None) -> None:
    raft = FakeRaft()
    proposer = make(raft)
    tasks = [asyncio.ensure_future(proposer.propose({"k": i})) for i in range(3)]
    await settle()
    raft.answer(0, fail_reason)
    for t in tasks:
        with pytest.raises(ProposalError) as info:
            await t
        assert info.value.code == code and info.value.applied is applied


@run_async
async def test_a_dropped_entry_times_out_as_unknown_and_frees_its_window_slot() -> None:
    raft = FakeRaft()  # never answers entry 0: a forwarded command pysyncobj dropped
    proposer = make(raft, window_entries_max=1)
    with pytest.raises(ProposalError) as info:
        await proposer.propose({"k": "lost"}, timeout_s=0.05)
    assert info.value.code == "commit_timeout" and info.value.applied is None
    next_one = asyncio.ensure_future(proposer.propose({"k": "next"}, timeout_s=5))
    for _ in range(100):  # the entry deadline frees the only slot
        if len(raft.entries) == 2:
            break
        await asyncio.sleep(0.01)
    assert raft.commands(1) == [{"k": "next"}]
    raft.answer(0)  # a late answer for the expired entry is ignored
    raft.answer(1)
    assert await next_one == {"echo": "next"}


@run_async
async def test_a_proposal_never_submitted_times_out_as_not_applied() -> None:
    raft = FakeRaft()
    proposer = make(raft)
    proposer.hold("no leader known")
    with pytest.raises(ProposalError) as info:
        await proposer.propose({"k": 1}, timeout_s=0.05)
    assert info.value.code == "unavailable" and info.value.applied is False
    assert raft.entries == []  # and it is never submitted later
    proposer.hold(None)
    await settle()
    assert raft.entries == []


@run_async
async def test_refuse_fails_waiting_and_new_proposals_fast_with_no_leader() -> None:
    raft = FakeRaft()
    proposer = make(raft)
    proposer.hold("no leader known")
    waiting = asyncio.ensure_future(proposer.propose({"k": 1}))
    await settle()
    proposer.refuse(ProposalError("no_leader", "no leader for over 3 s"))
    with pytest.raises(ProposalError) as info:
        await waiting
    assert info.value.code == "no_leader"
    with pytest.raises(ProposalError):
        await proposer.propose({"k": 2})
    proposer.refuse(None)
    proposer.hold(None)
    task = asyncio.ensure_future(proposer.propose({"k": 3}))
    await settle()
    raft.answer(0)
    assert await task == {"echo": 3}


@run_async
async def test_pending_limit_is_enforced_with_a_clear_error() -> None:
    raft = FakeRaft()
    proposer = make(raft, pending_commands_max=3)
    proposer.hold("no leader known")
    tasks = [asyncio.ensure_future(proposer.propose({"k": i}, timeout_s=1)) for i in range(3)]
    await settle()
    with pytest.raises(ProposalError) as info:
        await proposer.propose({"k": 99})
    assert info.value.code == "overloaded" and "pending_commands_max=3" in info.value.message
    assert info.value.applied is False
    proposer.close()
    for t in tasks:
        with pytest.raises(ProposalError):
            await t


@run_async
async def test_wrong_result_count_answers_internal_error_to_every_caller() -> None:
    raft = FakeRaft()
    proposer = make(raft)
    tasks = [asyncio.ensure_future(proposer.propose({"k": i})) for i in range(2)]
    await settle()
    _, callback = raft.entries[0]
    callback([{"only": "one"}], FAIL_REASON.SUCCESS)
    for t in tasks:
        assert (await t)["error"]["code"] == "internal_error"


@run_async
async def test_pending_bytes_limit_is_enforced_but_one_big_command_is_always_accepted() -> None:
    raft = FakeRaft()
    proposer = make(raft, pending_bytes_max=1_000)
    proposer.hold("no leader known")
    big = asyncio.ensure_future(proposer.propose({"k": "big", "pad": "x" * 5_000}, timeout_s=1))
    await settle()
    with pytest.raises(ProposalError) as info:
        await proposer.propose({"k": "small"})
    assert info.value.code == "overloaded" and "pending_bytes_max=1000" in info.value.message
    proposer.hold(None)
    await settle()
    raft.answer(0)
    assert await big == {"echo": "big"}
    small = asyncio.ensure_future(proposer.propose({"k": "small"}))  # drained: accepted again
    await settle()
    raft.answer(1)
    assert await small == {"echo": "small"}


@run_async
async def test_a_burst_of_applied_entries_wakes_the_loop_once_and_answers_everyone() -> None:
    """pysyncobj calls back once per entry from its thread; the loop is woken once per burst
    (one self-pipe write), and every caller still gets its own result."""
    raft = FakeRaft()
    proposer = make(raft)
    tasks = []
    for i in range(5):  # one at a time: five entries in flight
        tasks.append(asyncio.ensure_future(proposer.propose({"k": i})))
        await settle()
    assert len(raft.entries) == 5

    def answer_all() -> None:  # one Raft tick applying five entries
        for blob, callback in raft.entries:
            callback([{"echo": c["k"]} for c in unpack_entry(blob)[1]], FAIL_REASON.SUCCESS)

    t = threading.Thread(target=answer_all)
    t.start()
    t.join()  # the loop is blocked meanwhile: all five completions are queued before it runs
    assert await asyncio.gather(*tasks) == [{"echo": i} for i in range(5)]
    assert proposer.stats.completion_wakeups == 1
    assert proposer.stats.completions_drained == 5 and proposer.inflight_entries == 0
    late = asyncio.ensure_future(proposer.propose({"k": 9}))  # a later entry wakes it again
    await settle()
    raft.answer(5)
    assert await late == {"echo": 9} and proposer.stats.completion_wakeups == 2
