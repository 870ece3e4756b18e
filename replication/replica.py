"""The replicated broker: one pysyncobj object, one replicated method, bridged to asyncio.

Threading (replication/DESIGN.md "Threading"): pysyncobj runs in its own thread (autoTick).
Entries are applied there, under the apply lock; `Replica.read(fn)` takes the same lock on the
loop. Callbacks cross to the loop with `loop.call_soon_threadsafe`. The SyncObj is created on the
loop's thread, which must outlive it (pysyncobj stops ticking when its creator thread exits).

Apply never raises (issue 2, item 5): a command that makes the state raise gets an
`internal_error` result, is logged with its traceback, and the next commands go on.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pysyncobj import FAIL_REASON, SyncObj, replicated
from pysyncobj import pickle as raft_pickle
from pysyncobj.monotonic import monotonic as raft_monotonic
from pysyncobj.syncobj import _COMMAND_TYPE, _bchr

from replication.hardening import (
    SnapshotHooks,
    build_syncobj_args,
    install_patches,
    mark_for_resync,
    refuse_optimized_python,
    snapshotter_for,
)
from replication.patches import journal_for, set_journal_hooks
from replication.proposer import Proposer, unpack_entry
from replication.snapshots import SNAPSHOT_CHILD_NICE, kill_quietly
from replication.types import (
    BARRIER_TIMEOUT_S_DEFAULT,
    LOOP_TICK_INTERVAL_MS_DEFAULT,
    RESYNC_EXIT_CODE,
    WATCH_INTERVAL_MS_DEFAULT,
    MemberStatus,
    ProposalError,
    ReplicaConfig,
    ReplicaStatus,
    StateMachine,
)
from storage.errors import BrokerError, error_result, is_error
from storage.state import BrokerState

log = logging.getLogger(__name__)
T = TypeVar("T")

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}  # pysyncobj _RAFT_STATE
# A denied leadership transfer is tried again on each tick for this long; below the membership
# module's retry interval (RAFT_CHANGE_RETRY_MS_DEFAULT, 500 ms), so attempts never overlap.
LEADERSHIP_TRANSFER_TRY_S = 0.4
_LEADER_STATE = 2
_RAFT_STATE_ATTR = "_SyncObj__raftState"  # read-only; asserted present at start-up
# Written by the join guard (below); each asserted present at start-up.
_ELECTION_DEADLINE_ATTR = "_SyncObj__raftElectionDeadline"
_RAFT_TIMEOUT_FN = "_SyncObj__generateRaftTimeout"
_SET_TERM_FN = "_SyncObj__setCurrentTerm"
_TRANSPORT_ATTR = "_SyncObj__transport"


class ApplyCore:
    """The state and everything the Raft thread touches while applying. Not pickled."""

    def __init__(self, state: StateMachine, on_applied: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self.state = state
        self.on_applied = on_applied
        self.entries_applied = 0
        self.commands_applied = 0
        self.apply_errors = 0
        # The Raft index of the entry applied last (pysyncobj bumps raftLastApplied only after
        # apply returns): set by the replica once the SyncObj exists.
        self.index_source: Callable[[], int] | None = None
        self.last_entry_index = 0

    def apply_blob(self, blob: bytes) -> list[dict[str, Any]]:
        """Apply one entry; never raises. One result per command."""
        try:
            now_ms, cmds = unpack_entry(blob)
        except Exception:
            log.exception("undecodable entry (%d bytes) skipped", len(blob))
            self.apply_errors += 1
            return [error_result("internal_error", "undecodable Raft entry")]
        with self.lock:
            results = [self._apply_one(cmd, now_ms) for cmd in cmds]
            if self.index_source is not None:
                self.last_entry_index = self.index_source() + 1
            self.entries_applied += 1
            self.commands_applied += len(cmds)
        assert len(results) == len(cmds)
        self._notify()
        return results

    def _apply_one(self, cmd: Any, now_ms: int) -> dict[str, Any]:
        try:
            result = self.state.apply(cmd, now_ms)
        except Exception as exc:
            self.apply_errors += 1
            op = cmd.get("op") if isinstance(cmd, dict) else None
            log.exception("apply of op=%r raised; answered internal_error", op)
            return error_result("internal_error", f"apply failed: {type(exc).__name__}: {exc}")
        if not isinstance(result, dict):
            self.apply_errors += 1
            return error_result("internal_error", "apply returned a non-dict result")
        return result

    def _notify(self) -> None:
        try:
            self.on_applied()
        except Exception:
            log.exception("apply listener notification failed")

    def encode(self) -> bytes:
        # Called from the Raft thread (or its fork child): no lock, nobody else mutates.
        return self.state.encode_snapshot()

    def install(self, state: StateMachine) -> None:
        """Replace the state (a snapshot loaded at start or received from the leader)."""
        with self.lock:
            self.state = state
        self._notify()  # long polls waiting on a follower that caught up by snapshot


class _RaftBroker(SyncObj):  # type: ignore[misc]
    """The SyncObj. Everything it holds is set BEFORE super().__init__(), so pysyncobj's own
    pickled dump never contains runtime objects; snapshots go through SnapshotHooks."""

    def __init__(self, core: ApplyCore, syncobj_args: dict[str, Any]) -> None:
        self._core = core
        super().__init__(**syncobj_args)

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, blob: bytes) -> list[dict[str, Any]]:
        return self._core.apply_blob(blob)

    @replicated  # type: ignore[untyped-decorator]
    def apply_memory_batch(self, blob: bytes) -> list[dict[str, Any]]:
        """The same, for entries of durability `memory`: acknowledged before fdatasync
        (journal.memory_class recognises them by this method's id)."""
        return self._core.apply_blob(blob)


_PICKLE_FRAME = 0x95  # FRAME + u64 length: pickle protocol >= 4, on all but big pickles
_PICKLE_BININT1 = ord("K")
SAMPLE_BLOB_SIZES = (1, 300, 70_000)  # framed small, framed, unframed (> 64 KiB)


def method_id_of(payload: bytes) -> int | None:
    """The replicated method id of a pysyncobj command: its type byte, PROTO n, an optional
    FRAME, then BININT1 id (pickle of `(id, (blob,))`). None for anything else."""
    pos = 3
    if len(payload) > pos and payload[pos] == _PICKLE_FRAME:
        pos += 9
    if len(payload) > pos + 1 and payload[0] == _COMMAND_TYPE.REGULAR and (
            payload[pos] == _PICKLE_BININT1):
        return payload[pos + 1]
    return None


def memory_classifier(sync: Any) -> Callable[[bytes], bool]:
    """journal.memory_class: is this journal payload an `apply_memory_batch` command? Checked
    here against pysyncobj's own encoding of both methods (pickle protocol from patches.py)."""
    ids = {name: sync._methodToID[sync._getFuncName(name)]
           for name in ("apply_batch", "apply_memory_batch")}
    for name, fid in ids.items():
        for size in SAMPLE_BLOB_SIZES:
            payload = _bchr(_COMMAND_TYPE.REGULAR) + raft_pickle.dumps((fid, (b"x" * size,)))
            assert method_id_of(payload) == fid, (
                f"pysyncobj command encoding changed: cannot read the method id of {name}")
    memory = ids["apply_memory_batch"]
    return lambda payload: method_id_of(payload) == memory


def _default_state_factory() -> StateMachine:
    return BrokerState()


def _default_state_decoder(data: bytes) -> StateMachine:
    return BrokerState.decode_snapshot(data)


def _syncobj_args(
    cfg: ReplicaConfig, core: ApplyCore, decode: Callable[[bytes], StateMachine]
) -> dict[str, Any]:
    """kwargs for SyncObj, from the hardening layer (fsync'd journal, MAC'd frames, ...)."""
    refuse_optimized_python()
    install_patches(secret=cfg.secret)
    hooks = SnapshotHooks(encode=core.encode, install=lambda data: core.install(decode(data)))
    return build_syncobj_args(
        node_id=cfg.node_id,
        raft_addr=cfg.raft_addr,
        peers=cfg.members(),
        data_dir=Path(cfg.data_dir),
        snapshot_hooks=hooks,
        **_raft_conf(cfg),
    )


def _raft_conf(cfg: ReplicaConfig) -> dict[str, Any]:
    conf = dict(cfg.raft_conf)
    if cfg.threading_mode == "loop":
        conf["autoTick"] = False
    return conf


def _sync_leader_before_poll(sync: Any, journal: Any) -> None:
    """Leader: fsync new entries before waiting in poll, i.e. just after append_entries left.

    The hardening journal syncs the leader in setRaftCommitIndex, after the followers' acks
    arrived: two fsyncs in series per commit. Syncing here overlaps the leader's fsync with the
    followers' (one at a time: p50 median 9.2 -> 4.8 ms over 5 paired runs, DESIGN.md).
    Earlier is never less safe; the commit-time sync stays (a no-op when clean)."""
    poller = sync._poller
    inner = poller.poll

    def poll(timeout: float) -> None:
        if journal.dirty and sync._isLeader():
            journal.sync_soon()  # sync() unless only durability `memory` records wait
        inner(timeout)

    poller.poll = poll


_PIPE_NOTIFIER_ATTR = "_SyncObj__pipeNotifier"  # set when appendEntriesUseBatch is False


class CoalescingNotifier:
    """pysyncobj's PipeNotifier, written at most once per Raft-thread pass over its queue.

    `SyncObj._applyCommand` (any thread) queues the command, then writes one byte to a pipe to
    end the Raft thread's poll: one write per submitted entry (4 % of a leader at receive b100,
    docs/benchmarks.md). A write while an earlier one is still unconsumed wakes nobody new, so
    it is skipped. No lost wake-up: the Raft thread clears `pending` BEFORE it takes commands
    off the queue (`consumed`, wrapped around `_checkCommandsToApply`), and a submitter queues
    its command BEFORE it reads `pending`: a command queued after that pass saw `pending`
    cleared (or set by a later, unconsumed write) and so has a write of its own.
    """

    def __init__(self, inner: Any) -> None:
        assert callable(getattr(inner, "notify", None)), "pysyncobj PipeNotifier changed"
        self.inner = inner
        self.pending = False
        self.writes = 0
        self.skipped = 0

    def notify(self) -> None:  # any thread, after the command was queued
        if self.pending:
            self.skipped += 1
            return
        self.pending = True
        self.writes += 1
        self.inner.notify()

    def consumed(self) -> None:  # Raft thread, before it drains the command queue
        self.pending = False


def _coalesce_submit_wakeups(sync: Any) -> CoalescingNotifier | None:
    """Put a CoalescingNotifier in front of pysyncobj's pipe (None if it has no pipe)."""
    inner = getattr(sync, _PIPE_NOTIFIER_ATTR, None)
    if inner is None:
        return None
    notifier = CoalescingNotifier(inner)
    check = sync._checkCommandsToApply

    def check_commands() -> None:
        notifier.consumed()
        check()

    setattr(sync, _PIPE_NOTIFIER_ATTR, notifier)
    sync._checkCommandsToApply = check_commands
    return notifier


SINGLE_NODE_POLL_S = 0.001  # poll timeout while a 1-node cluster has entries in flight


def _wake_single_node(sync: Any, inflight: Callable[[], int]) -> None:
    """A 1-node cluster commits an entry on the tick after it is appended, but nothing arrives
    on the network to end that tick's poll (autoTickPeriod 50 ms): measured p50 54 ms one at a
    time. While our entries are in flight, poll briefly instead."""
    poller = sync._poller
    inner = poller.poll

    def poll(timeout: float) -> None:
        inner(min(timeout, SINGLE_NODE_POLL_S) if inflight() else timeout)

    poller.poll = poll


_APPLY_FN = "_SyncObj__applyLogEntries"  # returns "send append_entries now"
_NEXT_APPEND_ATTR = "_SyncObj__newAppendEntriesTime"  # the leader's next append_entries
_COMMANDS_QUEUE_ATTR = "_SyncObj__commandsQueue"
_LAST_INDEX_FN = "_SyncObj__getCurrentLogIndex"


class CommitNotifyDeferral:
    """Leader: a new commit index rides on the next append_entries instead of a send of its own.

    With `appendEntriesUseBatch` off, pysyncobj's leader sends append_entries to every follower
    right after each tick that applied entries, only to carry the new commit index: at one
    write at a time that is two more sends, two more follower wake-ups and the GIL held by the
    Raft thread while the loop waits to answer (docs/benchmarks.md, session 5). The next
    append_entries (a new entry, or the heartbeat) carries the commit index anyway. Instead,
    the leader moves its next append_entries to at most `delay_s` from now and polls no longer
    than that: a new entry within the delay carries the commit index, else it goes alone.

    Followers learn commits up to `delay_s` later (their local reads, long polls and SSE
    streams). A follower's own forwarded command is not delayed: when a tick applies an entry
    a follower forwarded, the commit index is sent at once as before. Safety does not
    depend on when followers learn the commit index, only liveness, which `delay_s` bounds.
    """

    def __init__(self, sync: Any, delay_s: float) -> None:
        assert delay_s > 0
        for name in (_APPLY_FN, _NEXT_APPEND_ATTR, _COMMANDS_QUEUE_ATTR, _LAST_INDEX_FN,
                     _RAFT_STATE_ATTR):
            assert hasattr(sync, name), f"pysyncobj internals changed ({name})"
        self.sync = sync
        self.delay_s = delay_s
        self.forwarded: collections.deque[int] = collections.deque()  # their log indexes
        self.pending = False  # a deferred commit notification has not gone out yet
        self.deferred = 0
        self.immediate = 0
        self._apply = getattr(sync, _APPLY_FN)
        queue = getattr(sync, _COMMANDS_QUEUE_ATTR)
        self._get_command = queue.get_nowait
        self._poll = sync._poller.poll
        setattr(sync, _APPLY_FN, self.apply_entries)
        queue.get_nowait = self.get_command
        sync._poller.poll = self.poll

    def get_command(self) -> Any:  # Raft thread, in _checkCommandsToApply
        item = self._get_command()
        if isinstance(item[1], tuple):  # (node, request_id): forwarded by a follower
            self.forwarded.append(getattr(self.sync, _LAST_INDEX_FN)() + 1)  # its index
        return item

    def apply_entries(self) -> bool:  # Raft thread, once per tick
        sync = self.sync
        send_now: bool = self._apply()
        applied, forwarded, waited_on = sync.raftLastApplied, self.forwarded, False
        while forwarded and forwarded[0] <= applied:
            forwarded.popleft()
            waited_on = True  # a follower waits to apply this entry to answer its client
        if not send_now or getattr(sync, _RAFT_STATE_ATTR) != _LEADER_STATE:
            return send_now
        if waited_on:
            self.immediate += 1
            return True
        due = raft_monotonic() + self.delay_s
        if due < getattr(sync, _NEXT_APPEND_ATTR):
            setattr(sync, _NEXT_APPEND_ATTR, due)
        self.pending = True
        self.deferred += 1
        return False

    def poll(self, timeout: float) -> None:  # Raft thread, at the end of each tick
        if self.pending:
            wait = getattr(self.sync, _NEXT_APPEND_ATTR) - raft_monotonic()
            if wait > self.delay_s or getattr(self.sync, _RAFT_STATE_ATTR) != _LEADER_STATE:
                self.pending = False  # an append_entries left since (or no longer leader)
            else:
                timeout = min(timeout, max(wait, 0.0))
        self._poll(timeout)


SNAPSHOT_EXPORTS_MAX_DEFAULT = 1  # concurrent GET /v1/cluster/snapshot per node (one fork each)
EXPORT_LENGTH = struct.Struct(">Q")  # the export pipe carries the length, then the bytes


@dataclass(frozen=True)
class SnapshotExport:
    """A consistent snapshot being encoded by a forked child (Replica.export_snapshot).

    `fd` is the read end of a pipe: EXPORT_LENGTH, then the storage snapshot (storage/snapshot.py
    format: magic, version, crc32, msgpack). The caller reads it, closes fd and reaps pid
    (`finish_export`)."""

    applied_index: int
    term: int
    pid: int
    fd: int


def _export_child(state: StateMachine, fd: int) -> None:
    """In the forked child: encode, write to the pipe, _exit. No logging (its locks may be held
    by threads that do not exist in the child), never return into the parent's code."""
    code = 1
    try:
        gc.disable()  # as the Raft snapshot child (replication/snapshots.py): no COW for GC,
        os.nice(SNAPSHOT_CHILD_NICE)  # and the node's heartbeats go first
        data = state.encode_snapshot()
        view = memoryview(EXPORT_LENGTH.pack(len(data)) + data)
        while view:
            view = view[os.write(fd, view):]
        code = 0
    except BaseException:  # noqa: BLE001, S110 - the parent sees a short stream
        pass
    finally:
        os._exit(code)


def finish_export(export: SnapshotExport) -> bool:
    """Close the pipe and reap the child (blocking: call it in a thread). True if it exited 0."""
    os.close(export.fd)
    _, status = os.waitpid(export.pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


_LIVE: dict[str, weakref.ref[Replica]] = {}  # node id -> its replica, for log lines only
_LIVE_LOCK = threading.Lock()


def raft_log_fields(node_id: str) -> str:
    """`node=.. term=.. commit_index=.. applied_index=..` of this process's replica of node_id
    ("-" before it starts). Reads three ints pysyncobj updates on its thread: no lock needed
    (each read is atomic), so it is cheap enough for every log line, from any thread."""
    with _LIVE_LOCK:
        ref = _LIVE.get(node_id)
    replica = ref() if ref is not None else None
    if replica is None or not hasattr(replica, "_sync"):
        return f"node={node_id} term=- commit_index=- applied_index=-"
    sync = replica._sync
    return (f"node={node_id} term={sync.raftCurrentTerm} commit_index={sync.raftCommitIndex} "
            f"applied_index={sync.raftLastApplied}")


class RaftLogFilter(logging.Filter):
    """Puts `raft_log_fields` on every record as `%(raft)s` (node/cli.py's log format)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.raft = raft_log_fields(self.node_id)
        except Exception:  # a log line is never lost to its context  # noqa: BLE001
            record.raft = f"node={self.node_id} term=? commit_index=? applied_index=?"
        return True


class RaftWatch:
    """Elections this node started (logged, counted) and the join guard, on one SyncObj.

    Join guard (docs/membership.md "Known costs"): a node that has not seen a leader since it
    started restarts its election timer whenever it connects to a peer. A node added at runtime
    has waited alone far past its election timeout; without this, the members' first connection
    (before the leader's first append) made it start an election at once. With it, the leader's
    appends (every 0.1 s) reach it well inside its next timeout (>= raftMinTimeout). A real
    leaderless cluster still elects: one timeout after the last connection.

    Stall guard: pysyncobj's tick checks the election timer first and reads the network last.
    A follower whose Raft thread stalled past its timeout (a slow fdatasync, a long pause, no
    CPU) started an election although the leader's appends were waiting unread in its socket
    (tests/integration/test_stall_guard.py: a follower with a 1.6 s fdatasync started
    elections at once, deposing a healthy leader). When the timer has run out, the guard
    first reads what already arrived (a zero-timeout poll, as if the previous tick had ended
    a moment later); a live leader's append restarts the timer, from the end of that read; a
    dead leader sends nothing and the election goes ahead. Raft's safety never depends on the
    timer, only how soon a dead leader is replaced.

    Everything here runs on the Raft thread, except `seen_leader`, which the loop may also set.
    """

    def __init__(self, sync: Any, node_id: str) -> None:
        for attr in (_ELECTION_DEADLINE_ATTR, _RAFT_TIMEOUT_FN, _SET_TERM_FN, _TRANSPORT_ATTR,
                     _RAFT_STATE_ATTR, "_onTick", "_poller"):
            assert hasattr(sync, attr), f"pysyncobj internals changed ({attr})"
        self.sync = sync
        self.node_id = node_id
        self.self_addr = str(sync.selfNode.id)
        self.seen_leader = False
        self.elections_started = 0
        self.timer_restarts = 0
        self.elections_averted = 0  # expired timers that found the leader's append unread
        self._on_tick_inner = sync._onTick
        sync._onTick = self._on_tick  # the tick thread looks it up on the instance each tick
        transport = getattr(sync, _TRANSPORT_ATTR)
        self._on_connected_inner = transport._onNodeConnectedCallback
        assert callable(self._on_connected_inner), "pysyncobj transport callback missing"
        self._set_term_inner = getattr(sync, _SET_TERM_FN)
        setattr(sync, _SET_TERM_FN, self._set_current_term)
        transport.setOnNodeConnectedCallback(self._on_connected)

    def _on_tick(self, time_to_wait: float) -> None:  # Raft thread
        sync = self.sync
        deadline = getattr(sync, _ELECTION_DEADLINE_ATTR)
        if (getattr(sync, _RAFT_STATE_ATTR) != _LEADER_STATE and deadline < raft_monotonic()
                and getattr(sync, _TRANSPORT_ATTR).ready):
            sync._poller.poll(0)
            if getattr(sync, _ELECTION_DEADLINE_ATTR) != deadline:
                # The leader is alive; its append reset the timer when read, but reading it may
                # have cost another slow fsync (the ack waits for it): count from now.
                timeout_s = getattr(sync, _RAFT_TIMEOUT_FN)()
                setattr(sync, _ELECTION_DEADLINE_ATTR, raft_monotonic() + timeout_s)
                self.elections_averted += 1
                log.info("event=election_averted node=%s reason=leader_append_unread_after_stall "
                         "overdue_ms=%d", self.node_id, (raft_monotonic() - deadline) * 1000)
        self._on_tick_inner(time_to_wait)

    def _on_connected(self, node: Any) -> None:  # Raft thread
        self._on_connected_inner(node)
        sync = self.sync
        if self.seen_leader or sync._getLeader() is not None:
            self.seen_leader = True
            return
        timeout_s = getattr(sync, _RAFT_TIMEOUT_FN)()
        assert timeout_s > 0
        setattr(sync, _ELECTION_DEADLINE_ATTR, raft_monotonic() + timeout_s)
        self.timer_restarts += 1
        log.info("event=election_timer_restarted node=%s reason=connected_before_any_leader "
                 "peer=%s", self.node_id, node.id)

    def _set_current_term(self, term: int, voted_for: Any) -> None:  # Raft thread
        old = int(self.sync.raftCurrentTerm)
        self._set_term_inner(term, voted_for)
        if term > old and voted_for == self.self_addr:
            self.elections_started += 1
            log.info("event=election_started node=%s term=%d", self.node_id, term)
        elif term > old:
            log.info("event=term_changed node=%s term=%d", self.node_id, term)


class Replica:
    """One node's replica of the broker state (architecture.md §2). Build with `start`."""

    def __init__(self, cfg: ReplicaConfig, loop: asyncio.AbstractEventLoop) -> None:
        self._cfg = cfg
        self._loop = loop
        self._addr_to_id = {addr: nid for nid, addr in cfg.members().items()}
        self._listeners: list[Callable[[], None]] = []
        self._listener_call_pending = False
        self._applied_unannounced = False  # set per applied entry, cleared once per tick
        self.listener_wakeups = 0  # loop wake-ups scheduled for apply listeners
        self.listener_fires = 0  # listener rounds run on the loop (<= wake-ups)
        self._closed = False
        self._write_refusal: str | None = None  # set on a node removed from the cluster
        self._raft_calls: collections.deque[Callable[[], None]] = collections.deque()
        self._raft_calls_hooked = False
        self._no_leader_since: float | None = None
        self._exports: set[int] = set()  # pids of running snapshot exports
        self.snapshot_exports_max = SNAPSHOT_EXPORTS_MAX_DEFAULT
        self._last_tick_s = 0.0
        self._tick_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._core: ApplyCore
        self._sync: _RaftBroker
        self._raft_watch: RaftWatch
        self._proposer: Proposer
        self._memory_proposer: Proposer
        self._proposers: tuple[Proposer, ...] = ()
        self._submit_notifier: CoalescingNotifier | None = None
        self._commit_notify: CommitNotifyDeferral | None = None

    @classmethod
    async def start(
        cls,
        cfg: ReplicaConfig,
        *,
        state_factory: Callable[[], StateMachine] | None = None,
        state_decoder: Callable[[bytes], StateMachine] | None = None,
    ) -> Replica:
        """Create the replica on the running loop's thread (which must outlive it)."""
        loop = asyncio.get_running_loop()
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        self = cls(cfg, loop)
        state = (state_factory or _default_state_factory)()
        self._core = ApplyCore(state, self._on_applied)
        args = _syncobj_args(cfg, self._core, state_decoder or _default_state_decoder)
        set_journal_hooks(args["conf"].journalFile, on_divergence=self._on_divergence)
        self._sync = _RaftBroker(self._core, args)
        assert hasattr(self._sync, _RAFT_STATE_ATTR), "pysyncobj internals changed (raft state)"
        self._raft_watch = RaftWatch(self._sync, cfg.node_id)
        self._sync.addOnTickCallback(self._announce_applies)
        self._submit_notifier = _coalesce_submit_wakeups(self._sync)
        self._core.index_source = lambda: int(self._sync.raftLastApplied)
        with _LIVE_LOCK:
            _LIVE[cfg.node_id] = weakref.ref(self)
        self._proposer, self._memory_proposer = (
            Proposer(loop, submit, entry_bytes_max=cfg.entry_bytes_max,
                     window_entries_max=cfg.window_entries_max,
                     pending_commands_max=cfg.pending_commands_max,
                     pending_bytes_max=cfg.pending_bytes_max)
            for submit in (self._submit, self._submit_memory))
        self._proposers = (self._proposer, self._memory_proposer)
        journal = journal_for(self._sync.conf.journalFile)
        # Until here every new record counted as `fsync` (waited for the disk): the safe side.
        journal.memory_class = memory_classifier(self._sync)
        if cfg.leader_early_sync:
            _sync_leader_before_poll(self._sync, journal)
        if len(cfg.members()) == 1 and cfg.threading_mode == "thread":
            _wake_single_node(self._sync, lambda: sum(p.inflight_entries for p in self._proposers))
        if cfg.commit_notify_delay_ms > 0 and self._submit_notifier is not None:
            self._commit_notify = CommitNotifyDeferral(self._sync,
                                                       cfg.commit_notify_delay_ms / 1000)
        self._watch_task = loop.create_task(self._watch())
        if cfg.threading_mode == "loop":
            self._ticker_task = loop.create_task(self._loop_ticker())
        log.info("replica node=%s raft=%s members=%s", cfg.node_id, cfg.raft_addr, cfg.members())
        return self

    # -- writes ----------------------------------------------------------------------------

    async def propose(
        self, cmd: dict[str, Any], *, timeout_s: float | None = None, memory: bool = False
    ) -> dict[str, Any]:
        """The command's result (maybe an error result); ProposalError if none.

        `memory`: durability `memory`, answered once a majority wrote it to the OS, fsync'd
        right after by each node's syncer thread (its own entries: never batched with others)."""
        if self._closed:
            raise ProposalError("unavailable", "the replica is closed")
        if self._write_refusal is not None:
            raise ProposalError("unavailable", self._write_refusal)
        timeout = self._cfg.proposal_timeout_s if timeout_s is None else timeout_s
        proposer = self._memory_proposer if memory else self._proposer
        return await proposer.propose(cmd, timeout_s=timeout)

    async def barrier(self, *, timeout_s: float = BARRIER_TIMEOUT_S_DEFAULT) -> None:
        """A no-op through the log: afterwards this node has applied every earlier write."""
        result = await self.propose({"op": "noop"}, timeout_s=timeout_s)
        if is_error(result):
            raise ProposalError("unavailable", f"barrier failed: {result['error']['message']}")

    def _submit(self, blob: bytes, callback: Callable[[Any, int], None]) -> None:
        self._sync.apply_batch(blob, callback=callback)

    def _submit_memory(self, blob: bytes, callback: Callable[[Any, int], None]) -> None:
        self._sync.apply_memory_batch(blob, callback=callback)

    def _on_divergence(self, idx: int, commit: int) -> None:  # Raft thread, from the journal
        """The cluster lost entries this node applied: its state can never match the log again.
        Set it aside and start over from the leader (hardening.mark_for_resync)."""
        snapshotter_for(Path(self._cfg.data_dir)).abandon()
        for pid in list(self._exports):
            kill_quietly(pid)
        mark_for_resync(Path(self._cfg.data_dir), idx=idx, commit=commit)
        if self._cfg.on_resync is not None:
            self._cfg.on_resync()
        logging.shutdown()
        os._exit(RESYNC_EXIT_CODE)

    # -- reads -----------------------------------------------------------------------------

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run fn(state) under the apply lock (keep fn short: applies wait for it)."""
        with self._core.lock:
            return fn(self._core.state)

    def export_snapshot(self) -> SnapshotExport:
        """Fork a child that encodes the state as of now (between two applies) into a pipe.

        The apply lock is held only for the fork (page tables; ~ms), not for the encoding,
        which would stall Raft (0.9 s per 100k messages of 200 B, measured)."""
        if len(self._exports) >= self.snapshot_exports_max:
            raise BrokerError("overloaded", f"snapshot_exports_max ({self.snapshot_exports_max})"
                              " snapshot downloads already run on this node; retry later")
        read_fd, write_fd = os.pipe()
        try:
            with self._core.lock:
                sync = self._sync
                index = max(int(sync.raftLastApplied), self._core.last_entry_index)
                term = int(sync.raftCurrentTerm)
                pid = os.fork()
                if pid == 0:
                    os.close(read_fd)
                    _export_child(self._core.state, write_fd)
        except OSError as err:  # e.g. ENOMEM: nothing forked
            os.close(read_fd)
            raise BrokerError("overloaded", f"cannot fork the snapshot export: {err}") from None
        finally:
            os.close(write_fd)
        assert pid > 0 and index >= 0
        self._exports.add(pid)
        return SnapshotExport(applied_index=index, term=term, pid=pid, fd=read_fd)

    async def finish_export(self, export: SnapshotExport) -> bool:
        """Close and reap an export (in a thread: the child may still be writing)."""
        try:
            return await asyncio.to_thread(finish_export, export)
        finally:
            self._exports.discard(export.pid)

    def add_apply_listener(self, cb: Callable[[], None]) -> None:
        """cb() runs on the loop after applies (coalesced: at most one call pending)."""
        self._listeners.append(cb)

    def remove_apply_listener(self, cb: Callable[[], None]) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    # Apply listeners: one loop wake-up per tick that applied something, not one per entry.
    # pysyncobj applies every committed entry of a tick in a row and runs its tick callbacks
    # after them (SyncObj._onTick), before it polls again. Each entry only sets a flag; the tick
    # callback wakes the loop once (docs/benchmarks.md, session 2: the per-entry self-pipe
    # write was 11 % of a follower's samples). No lost wake-up: an entry applied after the
    # flag was read sets it again and is announced at the end of its own tick; a wake-up still
    # pending (its fire not yet started) runs after every entry applied so far.

    def _on_applied(self) -> None:  # Raft thread, once per applied entry or installed snapshot
        self._applied_unannounced = True

    def _announce_applies(self) -> None:  # Raft thread (the loop's in "loop" mode), per tick
        if not self._applied_unannounced:
            return
        self._applied_unannounced = False
        if self._listener_call_pending or not self._listeners:
            return
        self._listener_call_pending = True
        self.listener_wakeups += 1
        try:
            self._loop.call_soon_threadsafe(self._fire_listeners)
        except RuntimeError:  # loop closed
            self._listener_call_pending = False

    def _fire_listeners(self) -> None:
        self._listener_call_pending = False
        self.listener_fires += 1
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                log.exception("apply listener raised")

    # -- status ----------------------------------------------------------------------------

    def leader_id(self) -> str | None:
        leader = self._sync._getLeader()
        if leader is None:
            return None
        addr = str(leader.id)
        return self._addr_to_id.get(addr, addr)

    def role(self) -> str:
        return _ROLES.get(getattr(self._sync, _RAFT_STATE_ATTR), "follower")

    def is_leader(self) -> bool:
        return bool(self._sync._isLeader())

    def is_ready(self) -> bool:
        """A leader is known and this node has caught up once: it applied the leader's commit
        index as first learned (pysyncobj's onReady; it does not flap under load)."""
        sync = self._sync
        return not self._closed and sync._getLeader() is not None and bool(sync.isReady())

    def status(self) -> ReplicaStatus:
        sync = self._sync
        leader_id = self.leader_id()
        role = self.role()
        members = [MemberStatus(self._cfg.node_id, self._cfg.raft_addr, True, role)]
        for node in sorted(sync.otherNodes, key=lambda n: str(n.id)):
            nid = self._addr_to_id.get(node.id, node.id)
            their_role = "leader" if nid == leader_id else ("follower" if leader_id else "unknown")
            members.append(MemberStatus(nid, node.id, bool(sync.isNodeConnected(node)), their_role))
        return ReplicaStatus(
            node_id=self._cfg.node_id,
            leader_id=leader_id,
            term=int(sync.raftCurrentTerm),
            commit_index=int(sync.raftCommitIndex),
            applied_index=int(sync.raftLastApplied),
            role=role,
            members=members,
            ready=self.is_ready(),
        )

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and tests."""
        core = self._core
        notifier = self._submit_notifier
        deferral = self._commit_notify
        failures: collections.Counter[str] = collections.Counter()
        for proposer in self._proposers:
            failures.update(proposer.stats.failures)
        return {
            **{name: sum(getattr(p.stats, name) for p in self._proposers)
               for name in ("entries_submitted", "commands_submitted", "entries_succeeded",
                            "entries_failed", "entries_expired")},
            "failures": dict(failures),
            "pending_commands": sum(p.pending_count for p in self._proposers),
            "inflight_entries": sum(p.inflight_entries for p in self._proposers),
            "entries_applied": core.entries_applied,
            "commands_applied": core.commands_applied,
            "apply_errors": core.apply_errors,
            "elections_started": self._raft_watch.elections_started,
            "election_timer_restarts": self._raft_watch.timer_restarts,
            "elections_averted": self._raft_watch.elections_averted,
            "listener_wakeups": self.listener_wakeups,
            "submit_pipe_writes": notifier.writes if notifier else 0,
            "submit_pipe_writes_skipped": notifier.skipped if notifier else 0,
            "commit_notifies_deferred": deferral.deferred if deferral else 0,
            "commit_notifies_immediate": deferral.immediate if deferral else 0,
        }

    # -- background: leader watch, no-leader fast fail, tick --------------------------------

    async def _watch(self) -> None:
        interval_s = WATCH_INTERVAL_MS_DEFAULT / 1000
        while not self._closed:
            try:
                self._watch_once(time.monotonic())
            except Exception:
                log.exception("replica watch failed")
            await asyncio.sleep(interval_s)

    def _watch_once(self, now_s: float) -> None:
        if self._sync._getLeader() is None:
            if self._no_leader_since is None:
                self._no_leader_since = now_s
                for proposer in self._proposers:
                    proposer.hold("no leader known")
            elif now_s - self._no_leader_since > self._cfg.no_leader_grace_s:
                grace = self._cfg.no_leader_grace_s
                for proposer in self._proposers:
                    proposer.refuse(ProposalError("no_leader", f"no leader for over {grace} s"))
            return
        self._raft_watch.seen_leader = True
        if self._no_leader_since is not None:
            self._no_leader_since = None
            for proposer in self._proposers:
                proposer.refuse(None)
                proposer.hold(None)
        self._maybe_tick(now_s)

    def _maybe_tick(self, now_s: float) -> None:
        if not self.is_leader():
            return
        if now_s - self._last_tick_s < self._cfg.tick_interval_ms / 1000:
            return
        if self._tick_task is not None and not self._tick_task.done():
            return
        self._last_tick_s = now_s
        self._tick_task = self._loop.create_task(self._tick())

    async def _tick(self) -> None:
        try:
            await self.propose({"op": "tick"})
        except ProposalError as exc:
            log.debug("tick not committed: %s", exc)

    async def _loop_ticker(self) -> None:
        """threading_mode "loop": pysyncobj runs on the loop's thread, one tick per ~1 ms."""
        interval_s = LOOP_TICK_INTERVAL_MS_DEFAULT / 1000
        while not self._closed:
            try:
                self._sync.doTick(0.0)
            except Exception:
                log.exception("doTick failed")
            await asyncio.sleep(interval_s)

    # -- membership (replication/membership.py drives these) -------------------------------

    def raft_members(self) -> list[str]:
        """Raft addresses of the voting members as this node's log has them, itself included."""
        sync = self._sync
        return sorted([self._cfg.raft_addr, *(str(n.id) for n in sync.otherNodes)])

    def change_membership(self, change: str, raft_addr: str,
                          callback: Callable[[Any, int], None]) -> None:
        """pysyncobj add/removeNodeToCluster; callback(result, FAIL_REASON) on the Raft thread.
        Thread-safe: pysyncobj only queues the command (forwarded to the leader if needed)."""
        assert change in ("add", "remove"), change
        assert ":" in raft_addr, raft_addr
        if change == "add":
            self._sync.addNodeToCluster(raft_addr, callback=callback)
        else:
            self._sync.removeNodeFromCluster(raft_addr, callback=callback)

    def transfer_leadership(self, callback: Callable[[Any, int], None]) -> None:
        """Leader only: hand leadership to the most caught-up follower (runs on the Raft thread,
        where pysyncobj's state lives).

        pysyncobj denies a transfer unless the target holds every entry at that instant, which
        under steady writes is rare at any one moment (a membership test saw 60 denials in a
        row on a loaded host). So a denied attempt is tried again on every tick for up to
        LEADERSHIP_TRANSFER_TRY_S; a tick that appended nothing new finds the target caught up."""
        if not self._raft_calls_hooked:
            self._raft_calls_hooked = True
            self._sync.addOnTickCallback(self._run_raft_calls)
        deadline = time.monotonic() + LEADERSHIP_TRANSFER_TRY_S

        def attempt() -> None:
            def done(result: Any, error: int) -> None:
                if (error == FAIL_REASON.REQUEST_DENIED and time.monotonic() < deadline
                        and self._sync._isLeader()):
                    self._raft_calls.append(attempt)  # the next tick
                    return
                callback(result, error)

            self._sync.transferLeadership(None, done)

        self._raft_calls.append(attempt)

    def _run_raft_calls(self) -> None:  # Raft thread, once per tick
        for _ in range(len(self._raft_calls)):  # calls queued by these run on the next tick
            try:
                self._raft_calls.popleft()()
            except Exception:
                log.exception("raft-thread call failed")

    def set_member_ids(self, addr_to_id: dict[str, str]) -> None:
        """Learned ids of members added at runtime (status and X-Raftmq-Leader show ids)."""
        assert all(":" in addr for addr in addr_to_id), addr_to_id
        self._addr_to_id = {**self._addr_to_id, **addr_to_id}

    def refuse_writes(self, reason: str | None) -> None:
        """A node removed from the cluster answers every proposal `unavailable` (503)."""
        if reason != self._write_refusal:
            log.warning("replica node=%s write refusal: %s", self._cfg.node_id, reason)
        self._write_refusal = reason

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._watch_task, self._tick_task, self._ticker_task):
            if task is not None:
                task.cancel()
        for proposer in self._proposers:
            proposer.close()
        if self._cfg.threading_mode == "loop":
            self._sync.destroy()
        else:
            await asyncio.to_thread(self._sync.destroy_synchronous)
        log.info("replica node=%s closed", self._cfg.node_id)
