"""Group commit: many proposals, one Raft entry; each caller gets its own result.

Runs on the event loop. `propose(cmd)` packs the command once (msgpack), appends it to a pending
list and schedules a flush (call_soon). A flush packs pending commands into entries of at most
`entry_bytes_max` while fewer than `window_entries_max` entries are in flight; what arrives while
the window is full goes into the next entries when a callback frees a slot. The entry blob is
msgpack `[now_ms, [cmd, ...]]`, built by concatenating the packed commands under an array header
(no re-encoding). A command bigger than the limit goes alone in its own entry.

`submit(blob, callback)` hands one entry to Raft; `callback(result, fail_reason)` may run on any
thread (pysyncobj's): it queues the completion and wakes the loop with one
`loop.call_soon_threadsafe` per burst of completions, not one per entry.

Every proposal has its own deadline: pysyncobj has no timeouts and drops forwarded commands
silently when the link to the leader is down (research/pysyncobj.md §2.4).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON

from replication.types import (
    ENTRY_BYTES_MAX_DEFAULT,
    PENDING_BYTES_MAX_DEFAULT,
    PENDING_COMMANDS_MAX_DEFAULT,
    PROPOSAL_TIMEOUT_S_DEFAULT,
    WINDOW_ENTRIES_MAX_DEFAULT,
    ProposalError,
)
from storage.errors import error_result

log = logging.getLogger(__name__)

Callback = Callable[[Any, int], None]
SubmitFn = Callable[[bytes, Callback], None]

DEADLINE_GRANULARITY_S = 0.05  # proposal deadlines fire up to this late

# fixarray(2) + uint64 now_ms + array32 header: the most an entry adds around its commands.
ENTRY_HEADER_BYTES_MAX = 1 + 9 + 5

# pysyncobj failure -> (our code, what it means). Not applied: safe to retry. Unknown: 504.
_FAILURES: dict[int, tuple[str, str]] = {
    FAIL_REASON.QUEUE_FULL: ("unavailable", "the Raft submit queue is full"),
    FAIL_REASON.MISSING_LEADER: ("no_leader", "no Raft leader is known"),
    FAIL_REASON.DISCARDED: ("unavailable", "the entry was overwritten by a new leader"),
    FAIL_REASON.NOT_LEADER: ("no_leader", "the node it was forwarded to is no longer leader"),
    FAIL_REASON.REQUEST_DENIED: ("unavailable", "the request was denied by the leader"),
    FAIL_REASON.LEADER_CHANGED: ("commit_timeout", "the leader changed; the outcome is unknown"),
    FAIL_REASON.UNKNOWN_OUTCOME: ("commit_timeout", "stale leader reply; the outcome is unknown"),
}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def pack_command(cmd: dict[str, Any]) -> bytes:
    """Pack one command exactly as it travels inside an entry."""
    packed: bytes = msgpack.packb(cmd, use_bin_type=True)
    return packed


def array_header(count: int) -> bytes:
    """The msgpack header of an array of `count` items."""
    assert count >= 0
    if count < 16:
        return bytes([0x90 | count])
    if count < 0x10000:
        return b"\xdc" + struct.pack(">H", count)
    assert count < 0x1_0000_0000
    return b"\xdd" + struct.pack(">I", count)


def build_entry(now_ms: int, packed_cmds: list[bytes]) -> bytes:
    """msgpack `[now_ms, [cmd, ...]]` from commands packed once by `pack_command`."""
    assert now_ms >= 0 and packed_cmds, "an entry carries at least one command"
    stamp: bytes = msgpack.packb(now_ms)
    head = b"\x92" + stamp + array_header(len(packed_cmds))
    return head + b"".join(packed_cmds)


def unpack_entry(blob: bytes) -> tuple[int, list[Any]]:
    """Inverse of build_entry; raises ValueError on anything else."""
    obj = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    if not (isinstance(obj, list) and len(obj) == 2):
        raise ValueError("entry is not [now_ms, [cmd, ...]]")
    now_ms, cmds = obj
    if not (isinstance(now_ms, int) and isinstance(cmds, list)):
        raise ValueError("entry is not [now_ms, [cmd, ...]]")
    return now_ms, cmds


@dataclass(eq=False)
class _Proposal:
    packed: bytes
    future: asyncio.Future[dict[str, Any]]
    timeout_s: float
    submitted: bool = False


@dataclass(eq=False)
class _Entry:
    proposals: list[_Proposal]
    done: bool = False
    timer: asyncio.TimerHandle | None = None
    seq: int = 0


@dataclass
class ProposerStats:
    entries_submitted: int = 0
    commands_submitted: int = 0
    entries_succeeded: int = 0
    entries_failed: int = 0
    entries_expired: int = 0
    completion_wakeups: int = 0  # loop wake-ups that delivered pysyncobj callbacks
    completions_drained: int = 0  # callbacks delivered by them (>= wake-ups)
    failures: dict[str, int] = field(default_factory=dict)


class Proposer:
    """Group commit on the event loop (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        submit: SubmitFn,
        *,
        entry_bytes_max: int = ENTRY_BYTES_MAX_DEFAULT,
        window_entries_max: int = WINDOW_ENTRIES_MAX_DEFAULT,
        pending_commands_max: int = PENDING_COMMANDS_MAX_DEFAULT,
        pending_bytes_max: int = PENDING_BYTES_MAX_DEFAULT,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        assert entry_bytes_max > ENTRY_HEADER_BYTES_MAX and window_entries_max >= 1
        assert pending_commands_max >= 1 and pending_bytes_max >= 1
        self._loop = loop
        self._submit_fn = submit
        self._entry_bytes_max = entry_bytes_max
        self._window_entries_max = window_entries_max
        self._pending_commands_max = pending_commands_max
        self._pending_bytes_max = pending_bytes_max
        self._pending_bytes = 0  # packed bytes of the proposals in self._pending
        self._clock_ms = clock_ms
        self._pending: deque[_Proposal] = deque()
        self._inflight: set[_Entry] = set()
        self._flush_scheduled = False
        self._hold_reason: str | None = None  # set: keep pending, submit nothing
        self._refuse: ProposalError | None = None  # set: fail new proposals at once
        self._entry_seq = 0
        # completions from pysyncobj's thread, drained on the loop (see "completion")
        self._done: deque[tuple[_Entry, Any, int]] = deque()
        self._drain_scheduled = False
        self._deadline_buckets: dict[int, list[weakref.ref[_Proposal]]] = {}
        self.stats = ProposerStats()

    # -- callers ---------------------------------------------------------------------------

    async def propose(
        self, cmd: dict[str, Any], *, timeout_s: float = PROPOSAL_TIMEOUT_S_DEFAULT
    ) -> dict[str, Any]:
        """The command's result (maybe an error result), or raise ProposalError."""
        assert timeout_s > 0, "timeout_s must be positive"
        if self._refuse is not None:
            raise ProposalError(self._refuse.code, self._refuse.message)
        if len(self._pending) >= self._pending_commands_max:
            raise ProposalError(
                "overloaded",
                f"too many proposals waiting (pending_commands_max={self._pending_commands_max})",
            )
        packed = pack_command(cmd)
        if self._pending and self._pending_bytes + len(packed) > self._pending_bytes_max:
            raise ProposalError(
                "overloaded",
                f"too many bytes waiting (pending_bytes_max={self._pending_bytes_max})",
            )
        proposal = _Proposal(packed, self._loop.create_future(), timeout_s)
        self._pending.append(proposal)
        self._pending_bytes += len(packed)
        self._schedule_flush()
        self._arm_deadline(proposal)
        return await proposal.future

    # -- deadlines: proposals share one timer per DEADLINE_GRANULARITY_S bucket ---------------
    # (asyncio.wait_for per proposal cost ~40 % of the proposer's time; weak references let
    # answered proposals and their results be freed before their bucket fires.)

    def _arm_deadline(self, proposal: _Proposal) -> None:
        due_s = self._loop.time() + proposal.timeout_s
        key = math.ceil(due_s / DEADLINE_GRANULARITY_S)
        bucket = self._deadline_buckets.get(key)
        if bucket is None:
            bucket = self._deadline_buckets[key] = []
            self._loop.call_at(key * DEADLINE_GRANULARITY_S, self._on_deadline, key)
        bucket.append(weakref.ref(proposal))

    def _on_deadline(self, key: int) -> None:
        for ref in self._deadline_buckets.pop(key, []):
            proposal = ref()
            if proposal is not None and not proposal.future.done():
                proposal.future.set_exception(_timeout_error(proposal))

    def hold(self, reason: str | None) -> None:
        """While a reason is set, keep proposals pending (e.g. no leader known yet)."""
        self._hold_reason = reason
        if reason is None:
            self._schedule_flush()

    def refuse(self, error: ProposalError | None) -> None:
        """Fail new proposals and everything not yet submitted with `error` (None: accept)."""
        self._refuse = error
        if error is None:
            self._schedule_flush()
            return
        self._fail_pending(error)

    def close(self) -> None:
        """Fail everything: pending ones were not applied, in-flight ones are unknown."""
        self.refuse(ProposalError("unavailable", "the replica is closing"))
        for entry in list(self._inflight):
            self._finish(entry, None, FAIL_REASON.LEADER_CHANGED, closing=True)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def inflight_entries(self) -> int:
        return len(self._inflight)

    # -- flushing --------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while (
            self._pending
            and self._hold_reason is None
            and len(self._inflight) < self._window_entries_max
        ):
            batch = self._take_batch()
            if batch:
                self._submit(batch)

    def _take_batch(self) -> list[_Proposal]:
        budget = self._entry_bytes_max - ENTRY_HEADER_BYTES_MAX
        batch: list[_Proposal] = []
        size = 0
        while self._pending:
            head = self._pending[0]
            if head.future.done():  # its caller gave up before it was proposed
                self._pop_pending()
                continue
            if batch and size + len(head.packed) > budget:
                break
            self._pop_pending()
            batch.append(head)
            size += len(head.packed)
            if size >= budget:
                break
        return batch

    def _submit(self, batch: list[_Proposal]) -> None:
        blob = build_entry(self._clock_ms(), [p.packed for p in batch])
        self._entry_seq += 1
        entry = _Entry(batch, seq=self._entry_seq)
        for p in batch:
            p.submitted = True
            p.packed = b""  # the blob holds the bytes now; keep one copy in flight
        self._inflight.add(entry)
        deadline_s = max(p.timeout_s for p in batch)
        entry.timer = self._loop.call_later(deadline_s, self._expire, entry)
        self.stats.entries_submitted += 1
        self.stats.commands_submitted += len(batch)
        done = self._done

        def on_done(result: Any, fail_reason: int) -> None:  # pysyncobj's thread (or ours)
            done.append((entry, result, fail_reason))  # deque.append: atomic
            if not self._drain_scheduled:
                self._wake_loop()

        self._submit_fn(blob, on_done)

    # -- completion ------------------------------------------------------------------------
    # pysyncobj calls back once per applied entry; one loop wake-up (a self-pipe write and an
    # epoll round) per entry cost ~8 % of a busy leader (docs/benchmarks.md). Completions are
    # queued instead and drained in one call: one wake-up per burst of applied entries.
    # Order matters against lost wake-ups: the Raft thread appends, then reads the flag; the
    # loop clears the flag, then drains. Either the drain sees the completion or the Raft
    # thread sees the flag cleared and schedules another drain.

    def _wake_loop(self) -> None:  # any thread
        self._drain_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain_done)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            self._drain_scheduled = False

    def _drain_done(self) -> None:
        self._drain_scheduled = False
        done = self._done
        drained = 0
        while done:
            entry, result, fail_reason = done.popleft()
            self._finish(entry, result, fail_reason)
            drained += 1
        self.stats.completion_wakeups += 1
        self.stats.completions_drained += drained

    def _finish(self, entry: _Entry, result: Any, fail_reason: int, closing: bool = False) -> None:
        if entry.done:  # expired before pysyncobj answered
            return
        entry.done = True
        self._inflight.discard(entry)
        if entry.timer is not None:
            entry.timer.cancel()
        if fail_reason == FAIL_REASON.SUCCESS:
            self.stats.entries_succeeded += 1
            self._resolve(entry, result)
        else:
            code, message = _FAILURES.get(fail_reason, ("commit_timeout", "unexpected failure"))
            if closing:
                message = "the replica closed before the entry committed; the outcome is unknown"
            self._count_failure(code)
            self._fail(entry.proposals, ProposalError(code, message))
        self._schedule_flush()

    def _expire(self, entry: _Entry) -> None:
        if entry.done:
            return
        entry.done = True
        self._inflight.discard(entry)
        self.stats.entries_expired += 1
        self._count_failure("commit_timeout")
        error = ProposalError("commit_timeout", "no commit before the deadline; outcome unknown")
        self._fail(entry.proposals, error)
        self._schedule_flush()

    def _resolve(self, entry: _Entry, result: Any) -> None:
        proposals = entry.proposals
        if not (isinstance(result, list) and len(result) == len(proposals)):
            count = _len(result)
            log.error("entry %d: %d results for %d commands", entry.seq, count, len(proposals))
            error = error_result("internal_error", "the entry was not applied as sent")
            result = [error] * len(proposals)
        for p, r in zip(proposals, result, strict=True):
            if not p.future.done():
                p.future.set_result(r)

    def _fail(self, proposals: list[_Proposal], error: ProposalError) -> None:
        for p in proposals:
            if not p.future.done():
                p.future.set_exception(ProposalError(error.code, error.message))

    def _pop_pending(self) -> _Proposal:
        proposal = self._pending.popleft()
        self._pending_bytes -= len(proposal.packed)
        assert self._pending_bytes >= 0 and (self._pending or self._pending_bytes == 0)
        return proposal

    def _fail_pending(self, error: ProposalError) -> None:
        while self._pending:
            p = self._pop_pending()
            if not p.future.done():
                p.future.set_exception(ProposalError(error.code, error.message))

    def _count_failure(self, code: str) -> None:
        self.stats.entries_failed += 1
        self.stats.failures[code] = self.stats.failures.get(code, 0) + 1


def _timeout_error(proposal: _Proposal) -> ProposalError:
    if not proposal.submitted:
        return ProposalError(
            "unavailable",
            f"not proposed within {proposal.timeout_s} s (overloaded or no leader)",
        )
    return ProposalError(
        "commit_timeout", f"not committed within {proposal.timeout_s} s; the outcome is unknown"
    )


def _len(obj: Any) -> int:
    return len(obj) if isinstance(obj, list) else -1
