"""Our Raft journal for pysyncobj 0.3.17: checksummed records, group-commit fsync, crash-safe.

pysyncobj's FileJournal never fsyncs (research/pysyncobj.md §3.1). This journal implements the
same interface (pysyncobj/journal.py `Journal`) and is installed through the journal factory
`pysyncobj.syncobj.createJournal` (see replication/patches.py).

File: MAGIC + u32 version, then records `[len u32][crc32 u32][idx u64][term u64][payload]`,
where crc32 covers idx, term and payload. On open, reading stops at the first short or corrupt
record and the tail is cut off (a torn tail is normal after a crash), then fsync'd.

* `add()` only buffers. `sync()` writes everything pending and issues ONE fdatasync (group
  commit). Callers decide when an acknowledgement needs durability: the leader in
  `setRaftCommitIndex` (before apply and callbacks), followers in the transport before
  `next_node_idx`/votes leave the node (replication/transport.py).
* Durability `memory` (docs/durability.md): `memory_class(payload)` names the entries whose
  acknowledgement does not wait for the disk. While only such records are unsynced,
  `must_sync` is False: callers `write_pending()` (the bytes reach the OS, so they survive a
  crash of the process) and acknowledge, and `sync_soon()` has a syncer thread fdatasync them.
  Any other record, or a truncation, makes `must_sync` True until a `sync()`.
* A different entry arriving at an index this node already counted as committed means the
  cluster lost a committed entry (a power loss within the `memory` fsync lag):
  the state machine has applied what the cluster no longer holds. `on_divergence(idx, commit)`
  is called before anything is cut (replication/replica.py: re-sync this node).
* Deferred truncation (defect 9): pysyncobj's follower truncates on every re-sent range and
  re-appends the same entries. `deleteEntriesFrom` only shortens the logical log; the file keeps
  the old records ("ghosts") until an entry that differs arrives. Re-adding an identical entry
  costs no I/O. Keeping records that no entry has contradicted is exactly Raft's rule (§5.3).
* `clear()` is deferred until the two `add()` calls that always follow it (`__loadDumpFile`);
  if the old log holds the snapshot's last entry, the entries after it are kept (Raft
  InstallSnapshot rule). This closes the compaction crash window (research §3.3).
* `deleteEntriesTo()` (compaction, only after the snapshot is durable) rewrites the file:
  temp file, fsync, rename, directory fsync.
* Only the newest `RAM_TAIL_BYTES` of payload stay in memory once written (every entry the
  leader is sending and this node is applying, in the steady state). Older payloads are read
  back from the file when asked for (a lagging follower, a restart's catch-up): the log between
  two snapshots (up to `log_compaction_bytes_max`) no longer costs its size in RAM.
* Term, vote and commit index live in `<journal>.meta`: crc32 + JSON, written with fsync +
  rename + directory fsync, synchronously for term/vote.

A failed write or fsync is fatal: the process exits (never acknowledge after a failed fsync).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, overload

log = logging.getLogger(__name__)

# -- durable file primitives (also used by replication/snapshots.py) ------------------------
# Injectable for tests (fsync counting): tests monkeypatch these two names.
_fsync_impl: Callable[[int], None] = os.fsync
_fdatasync_impl: Callable[[int], None] = os.fdatasync

FATAL_IO_EXIT_CODE = 75  # EX_TEMPFAIL: a write or fsync failed; never ack after that
CRASH_AT_ENV = "RAFTMQ_TEST_CRASH_AT"  # test only: "step[:kill|stop],..." (see crash_point)
POWERLOSS_DIR_ENV = "RAFTMQ_TEST_POWERLOSS_DIR"  # test only: record what each fsync made durable
SLOW_FDATASYNC_ENV = "RAFTMQ_TEST_SLOW_FDATASYNC_MS"  # test only: a disk this much slower


def _slow_fdatasync(delay_s: float) -> Callable[[int], None]:
    def slow(fd: int) -> None:
        time.sleep(delay_s)
        os.fdatasync(fd)
    return slow


if os.environ.get(SLOW_FDATASYNC_ENV):
    _fdatasync_impl = _slow_fdatasync(int(os.environ[SLOW_FDATASYNC_ENV]) / 1000)


def _fatal(what: str, err: OSError) -> NoReturn:
    log.critical("durable_io_failed what=%s error=%s: exiting, the node must not ack", what, err)
    os._exit(FATAL_IO_EXIT_CODE)


def fsync(fd: int) -> None:
    try:
        _fsync_impl(fd)
    except OSError as err:
        _fatal("fsync", err)
    _powerloss_record_file(fd)


def fdatasync(fd: int, *, upto: int | None = None) -> None:
    """`upto`: the file size this sync covers, when the file may grow meanwhile (the syncer
    thread's syncs: the power-loss recorder must not count later writes as durable)."""
    try:
        _fdatasync_impl(fd)
    except OSError as err:
        _fatal("fdatasync", err)
    _powerloss_record_file(fd, upto)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as err:
        _fatal("write", err)


def truncate(fd: int, offset: int) -> None:
    _powerloss_note_truncate(fd, offset)
    try:
        os.ftruncate(fd, offset)
    except OSError as err:
        _fatal("ftruncate", err)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync_impl(fd)
    except OSError as err:
        _fatal("fsync(dir)", err)
    finally:
        os.close(fd)
    _powerloss_record_dir(path)


def write_file_atomic(path: Path, data: bytes, *, step_prefix: str | None = None) -> None:
    """Write `path` so that after a crash it holds either the old or the new content, durably.

    temp file, write, fsync, rename, fsync of the directory. `step_prefix` names crash points
    (`<prefix>.after_tmp`, `.after_rename`, `.done`) for the kill -9 tests.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = create_file(tmp)
    try:
        write_all(fd, data)
        fsync(fd)
    finally:
        os.close(fd)
    if step_prefix:
        crash_point(step_prefix + ".after_tmp")
    try:
        os.replace(tmp, path)
    except OSError as err:  # e.g. EIO: the new content is not in place, never carry on
        _fatal("rename", err)
    if step_prefix:
        crash_point(step_prefix + ".after_rename")
    fsync_dir(path.parent)
    if step_prefix:
        crash_point(step_prefix + ".done")


def create_file(path: Path) -> int:
    """Open a new (or emptied) file for writing; returns the fd."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as err:  # e.g. ENOSPC when the file system is out of inodes
        _fatal("create", err)
    _powerloss_note_truncate(fd, 0)  # a new inode: its shadow starts empty
    return fd


def crash_point(step: str) -> None:
    """Test hook: with RAFTMQ_TEST_CRASH_AT naming `step`, crash the node right here.

    `step` or `step:kill` SIGKILLs the node (the parent too when called in a snapshot child);
    `step:stop` SIGSTOPs it so the test can inspect, then kill it.
    """
    spec = os.environ.get(CRASH_AT_ENV)
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.partition(":")
        if name == step:
            _crash(step, action or "kill")


def _crash(step: str, action: str) -> None:
    sig = signal.SIGSTOP if action == "stop" else signal.SIGKILL
    os.write(2, f"raftmq crash_point step={step} action={action}\n".encode())
    parent = node_pid[0]
    if parent and parent != os.getpid():
        os.kill(parent, sig)
    os.kill(os.getpid(), sig)


node_pid = [0]  # set by install_patches: the node process (its forked snapshot children see it)


# -- power-loss recorder (test only) ----------------------------------------------------------
# After each real fsync, copy what it made durable into a shadow directory: for a file, the bytes
# of its inode (incrementally); for a directory, its name -> inode map. The test rebuilds each
# data dir from the shadow after kill -9 (tests/support/durability_powerloss.py).
_pl_seen: set[int] = set()
_pl_dirty_from: dict[int, int] = {}


# Read once: looking the variable up on every fsync was ~1.5 % of a follower's samples at one
# write at a time. The tests set it in the node's environment before it starts.
_PL_DIR = Path(os.environ[POWERLOSS_DIR_ENV]) if os.environ.get(POWERLOSS_DIR_ENV) else None


def _pl_dir() -> Path | None:
    return _PL_DIR


def _powerloss_note_truncate(fd: int, offset: int) -> None:
    if _pl_dir() is None:
        return
    ino = os.fstat(fd).st_ino
    _pl_dirty_from[ino] = min(offset, _pl_dirty_from.get(ino, offset))


def _powerloss_record_file(fd: int, upto: int | None = None) -> None:
    shadow_dir = _pl_dir()
    if shadow_dir is None:
        return
    ino, size = os.fstat(fd).st_ino, os.fstat(fd).st_size
    if upto is not None:
        size = min(size, upto)
    shadow = shadow_dir / f"ino-{ino}"
    known = shadow.stat().st_size if ino in _pl_seen and shadow.exists() else 0
    start = min(known, _pl_dirty_from.pop(ino, known))
    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        data = os.pread(rfd, size - start, start)
    finally:
        os.close(rfd)
    sfd = os.open(shadow, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(sfd, data, start)
        os.ftruncate(sfd, size)
    finally:
        os.close(sfd)
    _pl_seen.add(ino)


def _powerloss_record_dir(path: Path) -> None:
    shadow_dir = _pl_dir()
    if shadow_dir is None:
        return
    entries = {e.name: e.inode() for e in os.scandir(path) if e.is_file(follow_symlinks=False)}
    key = zlib.crc32(str(path.resolve()).encode())
    record = json.dumps({"path": str(path.resolve()), "entries": entries}).encode()
    tmp = shadow_dir / f"dir-{key}.json.tmp.{os.getpid()}"
    tmp.write_bytes(record)
    os.replace(tmp, shadow_dir / f"dir-{key}.json")

JOURNAL_MAGIC = b"RMQJRNL\x00"
JOURNAL_VERSION = 1
_HEADER = JOURNAL_MAGIC + struct.pack("<I", JOURNAL_VERSION)
_REC = struct.Struct("<IIQQ")  # payload len, crc32(idx, term, payload), idx, term
_IDX_TERM = struct.Struct("<QQ")
RECORD_PAYLOAD_BYTES_MAX = 0xFFFF_FFFF  # u32 length field
META_SUFFIX = ".meta"

Entry = tuple[bytes, int, int]  # (command, idx, term) as pysyncobj stores it
# In DurableJournal._records an entry whose payload was evicted to the file: (None, idx, term).
Held = tuple[bytes | None, int, int]

# Payload bytes kept in memory after they are written: the entries in flight to followers and
# being applied are this recent unless a follower lags or restarts (then they are read back).
RAM_TAIL_ENV = "RAFTMQ_TEST_JOURNAL_RAM_TAIL_BYTES"  # test only: 0 reads every entry back
RAM_TAIL_BYTES = int(os.environ.get(RAM_TAIL_ENV, 8 << 20))
# The first two records stay in memory too: pysyncobj reads log[0] (and log[1]) for their
# indexes on every append it sends or receives, and after a compaction they are the snapshot's.
PINNED_RECORDS = 2


@dataclass
class JournalStats:
    """Counters for tests, metrics and DESIGN.md measurements."""

    adds: int = 0  # add() calls (what pysyncobj appended, including re-sends)
    records_written: int = 0  # records that cost bytes on disk
    dedup_skips: int = 0  # identical re-adds after a truncation: no I/O
    truncations_logical: int = 0  # deleteEntriesFrom calls
    truncations_physical: int = 0  # ftruncate calls (a different entry arrived)
    syncs: int = 0  # fdatasync calls of the journal file
    sync_s_total: float = 0.0  # time spent in write + fdatasync of sync()
    sync_s_max: float = 0.0
    bytes_written: int = 0
    rewrites: int = 0  # compactions / snapshot installs (atomic rewrite)
    torn_bytes_dropped: int = 0  # cut from the tail at open
    payload_reads: int = 0  # entries read back from the file (evicted from memory)
    divergences: int = 0  # committed entries contradicted by the leader (on_divergence)
    extra: dict[str, int] = field(default_factory=dict)


def _crc(idx: int, term: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_IDX_TERM.pack(idx, term)))


def encode_record(entry: Entry) -> bytes:
    cmd, idx, term = entry
    assert len(cmd) <= RECORD_PAYLOAD_BYTES_MAX, "journal record too large"
    return _REC.pack(len(cmd), _crc(idx, term, cmd), idx, term) + cmd


def decode_records(data: bytes, start: int) -> tuple[list[Entry], list[int], int]:
    """Parse records from `start`; stop at the first short or corrupt one.

    Returns (entries, record offsets, end offset of the last good record). Index continuity is
    part of validity: a record whose idx does not follow its predecessor ends the log too.
    """
    entries: list[Entry] = []
    offsets: list[int] = []
    pos = start
    while pos + _REC.size <= len(data):
        size, crc, idx, term = _REC.unpack_from(data, pos)
        end = pos + _REC.size + size
        if end > len(data):
            break
        payload = data[pos + _REC.size : end]
        if _crc(idx, term, payload) != crc:
            break
        if entries and idx != entries[-1][1] + 1:
            break
        entries.append((payload, idx, term))
        offsets.append(pos)
        pos = end
    return entries, offsets, pos


class JournalError(Exception):
    """The journal files cannot be used (bad magic, corrupt meta): the node must not start."""


class MetaFile:
    """`<journal>.meta`: currentTerm, votedFor, commit index. crc32 + JSON, atomic and durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        if len(raw) < 4 or zlib.crc32(raw[4:]) != struct.unpack_from("<I", raw)[0]:
            msg = f"meta file {self.path} is corrupt (crc mismatch): refusing to start"
            raise JournalError(msg)
        values = json.loads(raw[4:])
        assert isinstance(values, dict)
        return values

    def store(self) -> None:
        body = json.dumps(self.values, sort_keys=True).encode()
        write_file_atomic(self.path, struct.pack("<I", zlib.crc32(body)) + body)


class Syncer:
    """A thread that fdatasyncs the journal for records nobody waits for (durability `memory`).

    The Raft thread writes the bytes, then `request(fd, seq, size)`; the thread syncs the newest
    request and then publishes `synced_seq`, the journal's write count that sync covered. Only
    this thread writes `synced_seq`; the journal compares it with its own count. `drain()` is
    called before the Raft thread syncs, cuts or closes the file, so the journal file never has
    two syncs, or a sync and a cut, at once.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._wanted: tuple[int, int, int] | None = None  # (fd, seq, size)
        self._busy = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.synced_seq = -1
        self.syncs = 0

    def request(self, fd: int, seq: int, size: int) -> None:
        with self._cond:
            self._wanted = (fd, seq, size)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def drain(self) -> None:
        """Drop a sync not yet started and wait for the running one (the caller syncs, cuts or
        rewrites the file next: after a cut, `must_sync` makes the next ack wait for a sync)."""
        if self._thread is None:
            return
        with self._cond:
            self._wanted = None
            while self._busy:
                self._cond.wait()

    def stop(self) -> None:
        self.drain()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                assert self._wanted is not None
                fd, seq, size = self._wanted
                self._wanted, self._busy = None, True
            try:
                fdatasync(fd, upto=size)
            finally:
                with self._cond:
                    self.synced_seq, self._busy = seq, False
                    self.syncs += 1
                    self._cond.notify_all()


class DurableJournal:
    """pysyncobj Journal interface (journal.py:9-48) over our record file."""

    def __init__(self, path: str | Path, *, leader_probe: Callable[[], bool] | None = None) -> None:
        self.path = Path(path)
        self.stats = JournalStats()
        # Called with the seconds of each fdatasync (node/http_cluster.py: a histogram).
        self.on_fdatasync: Callable[[float], None] | None = None
        self.leader_probe = leader_probe
        # Durability `memory` (module doc): None = every record must be synced before its ack.
        self.memory_class: Callable[[bytes], bool] | None = None
        self.on_divergence: Callable[[int, int], None] | None = None
        self._meta = MetaFile(Path(str(self.path) + META_SUFFIX))
        self._meta_dirty = False
        self._records: list[Held] = []  # what the file holds (after pending writes)
        # _records[PINNED_RECORDS:_ram_from] have their payloads only in the file
        self._ram_from = 0
        self._ram_bytes = 0  # payload bytes of _records[_ram_from:]
        self.generation = 0  # bumped when record positions change (see _FileEntries)
        self._offsets: list[int] = []  # file offset of each record
        self._n = 0  # logical length: pysyncobj's log is self._records[:self._n]
        self.payload_bytes = 0  # sum of the payloads the file holds (compaction by size)
        self._pending = bytearray()  # bytes not yet written, starting at self._written_end
        self._written_end = 0
        self._durable = True  # False while written or truncated bytes are not fsync'd
        self._must_sync = False  # a record or cut whose ack waits for the disk is unsynced
        self._write_seq = 0  # bumped with every change that makes the file not durable
        self._requested_seq = -1  # the newest write count handed to the syncer
        self._syncer = Syncer(f"journal-sync-{self.path.name}")
        self._clear_pending: list[Entry] | None = None
        self._fd = -1
        self._rfd = -1  # read-only, for evicted payloads
        self._open()

    # -- opening ---------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.path.exists():
            write_file_atomic(self.path, _HEADER)
        data = self.path.read_bytes()
        if len(data) < len(_HEADER) or data[: len(_HEADER)] != _HEADER:
            raise JournalError(f"journal {self.path} has a bad header; refusing to start")
        records, offsets, end = decode_records(data, len(_HEADER))
        self._refuse_lost_entries(data, records, end)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._rfd = os.open(self.path, os.O_RDONLY)
        if end < len(data):
            self.stats.torn_bytes_dropped = len(data) - end
            log.warning("journal=%s torn_tail_bytes=%d cut", self.path, len(data) - end)
            truncate(self._fd, end)
            fsync(self._fd)
        self._records, self._offsets, self._n = list(records), offsets, len(records)
        self.payload_bytes = self._ram_bytes = sum(len(e[0]) for e in records)
        self._written_end = end
        del data, records
        self._evict()
        assert self._n == len(self._offsets)

    def _refuse_lost_entries(self, data: bytes, records: list[Entry], end: int) -> None:
        """A torn tail is normal after a crash; losing acknowledged entries is not.

        The meta file's commit index is only ever written after a journal sync, so after any
        crash or power loss the durable journal reaches it. Ending before it, or a bad record
        followed by a good one, means corruption: refuse to start instead of serving (and
        voting) with a shortened log. Recover by wiping this node's data dir: it catches up
        from its peers.
        """
        last = records[-1][1] if records else 0
        if end < len(data) and _good_record_after(data, end, last + 2):
            msg = f"journal {self.path}: corrupt record at byte {end} with good records after it"
            raise JournalError(msg + "; refusing to start (wipe this node, it catches up)")
        commit = int(self._meta.values.get("commit", 0))
        if commit > last:
            raise JournalError(
                f"journal {self.path} ends at index {last} but index {commit} was committed: "
                "entries were lost or corrupted; refusing to start (wipe this node, it catches up)"
            )

    # -- pysyncobj interface ---------------------------------------------------------------
    def add(self, command: bytes | str, idx: int, term: int) -> None:
        entry: Entry = (_to_bytes(command), idx, term)
        self.stats.adds += 1
        if self._clear_pending is not None:
            self._clear_pending.append(entry)
            if len(self._clear_pending) == 2:
                self._finish_clear(self._clear_pending[0], self._clear_pending[1])
            return
        if self._n < len(self._records):
            if self._entry(self._n) == entry:
                self._n += 1
                self.stats.dedup_skips += 1
                return
            self.contradicted(idx)
            self._cut_file(self._n)
        assert self._n == len(self._records), "logical log must end the file here"
        assert not self._records or idx == self._records[-1][1] + 1, "journal index gap"
        self._append(entry)

    def _append(self, entry: Entry) -> None:
        rec = encode_record(entry)
        self._offsets.append(self._written_end + len(self._pending))
        self._records.append(entry)
        self._pending += rec
        self._n += 1
        self.payload_bytes += len(entry[0])
        self._ram_bytes += len(entry[0])
        self._durable = False
        self._write_seq += 1
        if self.memory_class is None or not self.memory_class(entry[0]):
            self._must_sync = True
        self.stats.records_written += 1

    def contradicted(self, idx: int) -> None:
        """The leader holds a different entry at `idx` (module doc): above the commit index that
        is Raft's normal repair; at or below it, the cluster lost an entry this node counted as
        committed. Called by add() and by the transport (a conflicting prevLogTerm)."""
        commit = int(self._meta.values.get("commit", 0))
        if idx > commit:
            return
        self.stats.divergences += 1
        log.critical("journal=%s committed entry %d (commit index %d) contradicted by the "
                     "leader: the cluster lost it; this node's state has diverged",
                     self.path, idx, commit)
        if self.on_divergence is not None:
            self.on_divergence(idx, commit)

    def clear(self) -> None:
        # Only called by __loadDumpFile, always followed by add(prev) and add(last).
        assert self._clear_pending is None
        self._clear_pending = []

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        assert entryFrom >= 0, entryFrom
        self.stats.truncations_logical += 1
        self._n = min(self._n, entryFrom)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        """Compaction: drop the first `entryTo` entries. The snapshot is durable already."""
        assert 0 <= entryTo <= self._n, (entryTo, self._n)
        crash_point("journal.compact.begin")
        self._rewrite(self._entries(entryTo, len(self._records)), self._n - entryTo)

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            start, stop, step = item.indices(self._n)
            if start >= self._ram_from or step != 1 or stop <= start:
                return [self._entry(i) for i in range(start, stop, step)]
            return _FileEntries(self, start, stop)
        if item < 0:
            item += self._n
        if not 0 <= item < self._n:
            raise IndexError(item)
        return self._entry(item)

    def __len__(self) -> int:
        return self._n

    def _destroy(self) -> None:
        self.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        """The leader counts itself toward commit: its copy must be durable before apply (for
        `memory` records: written to the OS, its fdatasync running or to come)."""
        if not self._durable and (self.leader_probe is None or self.leader_probe()):
            if self._must_sync:
                self.sync()
            else:
                self.write_pending()
        if self._meta.values.get("commit") != raftCommitIndex:
            self._meta.values["commit"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        commit = int(self._meta.values.get("commit", 1))
        return min(commit, self._records[self._n - 1][1]) if self._n else 1

    # -- payloads in memory or in the file ---------------------------------------------------
    @property
    def payload_bytes_in_memory(self) -> int:
        pinned = self._records[: min(PINNED_RECORDS, self._ram_from)]
        return self._ram_bytes + sum(len(p) for p, _idx, _term in pinned if p is not None)

    def _entry(self, i: int) -> Entry:
        """Record `i` of the file (0-based), its payload read back if it was evicted."""
        payload, idx, term = self._records[i]
        if payload is None:
            start = self._offsets[i] + _REC.size
            payload = os.pread(self._rfd, self._record_end(i) - start, start)
            self.stats.payload_reads += 1
        return payload, idx, term

    def _entries(self, start: int, stop: int) -> list[Entry]:
        return [self._entry(i) for i in range(start, stop)]

    def _record_end(self, i: int) -> int:
        nxt = i + 1
        return self._offsets[nxt] if nxt < len(self._offsets) else self._written_end + len(
            self._pending)

    def _evict(self) -> None:
        """Drop from memory the oldest written payloads while more than RAM_TAIL_BYTES are
        held (they stay readable from the file)."""
        while self._ram_bytes > RAM_TAIL_BYTES:
            payload, idx, term = self._records[self._ram_from]
            assert payload is not None
            if self._offsets[self._ram_from] + _REC.size + len(payload) > self._written_end:
                return  # still pending: only written records are read back
            if self._ram_from >= PINNED_RECORDS:
                self._records[self._ram_from] = (None, idx, term)
            self._ram_bytes -= len(payload)
            self._ram_from += 1

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802,N803
        # Raft: term and vote are durable before any message reflecting them leaves.
        self._meta.values["term"] = term
        self._meta.values["vote"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.values.get("term", 0))

    def getVotedForNodeId(self) -> Any:  # noqa: N802
        return self._meta.values.get("vote")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if self._meta_dirty:
            self._store_meta()

    # -- durability ------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """True while some record or truncation is not yet fsync'd."""
        self._settle()
        return not self._durable

    @property
    def must_sync(self) -> bool:
        """True while an unsynced record or cut needs the disk before its acknowledgement."""
        return self._must_sync

    @property
    def background_syncs(self) -> int:
        return self._syncer.syncs

    def _settle(self) -> None:
        """The syncer's last fdatasync covered every write so far: all durable."""
        if not self._durable and self._syncer.synced_seq == self._write_seq:
            self._durable = True
            self._must_sync = False

    def write_pending(self) -> None:
        """Hand the buffered records to the OS (no fsync): they survive a crash of the process."""
        if self._pending:
            data = bytes(self._pending)
            write_all(self._fd, data)
            self._written_end += len(data)
            self.stats.bytes_written += len(data)
            self._pending.clear()
            self._evict()

    def sync_soon(self) -> None:
        """Write what is pending and have the syncer thread fdatasync it; return at once.
        With `must_sync`, sync here instead (those acks wait for it)."""
        if self._must_sync:
            self.sync()
            return
        self._settle()
        if self._durable or self._requested_seq == self._write_seq:
            return
        self.write_pending()
        self._requested_seq = self._write_seq
        self._syncer.request(self._fd, self._write_seq, self._written_end)

    def sync(self) -> None:
        """Write everything pending and fdatasync once (group commit)."""
        self._settle()
        if self._durable:
            return
        self._syncer.drain()
        start_s = time.perf_counter()
        self.write_pending()
        fdatasync_start_s = time.perf_counter()
        fdatasync(self._fd)
        end_s = time.perf_counter()
        if self.on_fdatasync is not None:
            self.on_fdatasync(end_s - fdatasync_start_s)
        took_s = end_s - start_s
        self.stats.syncs += 1
        self.stats.sync_s_total += took_s
        self.stats.sync_s_max = max(self.stats.sync_s_max, took_s)
        self._durable = True
        self._must_sync = False

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            self._syncer.stop()
            os.close(self._fd)
            self._fd = -1
        if self._rfd >= 0:
            os.close(self._rfd)
            self._rfd = -1

    def last_index(self) -> int:
        return self._records[self._n - 1][1] if self._n else 0

    # -- internals -------------------------------------------------------------------------
    def _store_meta(self) -> None:
        self.sync()  # the commit index in meta never points past the durable log
        self._meta.store()
        self._meta_dirty = False

    def _cut_file(self, keep: int) -> None:
        """Physically drop records [keep:] (a different entry arrived at `keep`)."""
        assert keep <= len(self._records)
        self._syncer.drain()
        offset = self._offsets[keep]
        end = self._written_end + len(self._pending)
        removed = end - offset - _REC.size * (len(self._records) - keep)
        self.payload_bytes -= removed
        if keep >= self._ram_from:
            self._ram_bytes -= removed
        else:  # every held payload was in the cut part
            self._ram_from, self._ram_bytes = keep, 0
        del self._records[keep:]
        del self._offsets[keep:]
        self.generation += 1
        if offset >= self._written_end:
            del self._pending[offset - self._written_end :]
        else:
            self._pending.clear()
            truncate(self._fd, offset)
            self._written_end = offset
        self._durable = False
        self._must_sync = True
        self._write_seq += 1
        self.stats.truncations_physical += 1

    def _finish_clear(self, prev: Entry, last: Entry) -> None:
        """Snapshot loaded: keep the entries after its last one if our log holds that entry."""
        self._clear_pending = None
        kept: list[Entry] = []
        logical_tail = 0
        first = self._records[0][1] if self._records else 0
        pos = last[1] - first
        if self._records and 0 <= pos < len(self._records) and self._entry(pos) == last:
            kept = self._entries(pos + 1, len(self._records))
            logical_tail = max(0, self._n - (pos + 1))
        log.info("journal=%s snapshot_last=%d kept_tail=%d", self.path, last[1], len(kept))
        self._rewrite([prev, last, *kept], 2 + logical_tail)

    def _rewrite(self, records: list[Entry], logical: int) -> None:
        """Atomically replace the file with `records` (tmp, fsync, rename, dir fsync)."""
        assert logical <= len(records)
        parts = [_HEADER]
        offsets = []
        pos = len(_HEADER)
        for entry in records:
            rec = encode_record(entry)
            offsets.append(pos)
            parts.append(rec)
            pos += len(rec)
        self._syncer.drain()
        os.close(self._fd)
        os.close(self._rfd)
        self._fd = self._rfd = -1
        write_file_atomic(self.path, b"".join(parts), step_prefix="journal.rewrite")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._rfd = os.open(self.path, os.O_RDONLY)
        self._records, self._offsets, self._n = list(records), offsets, logical
        self._ram_from = 0
        self.generation += 1
        self.payload_bytes = self._ram_bytes = sum(len(e[0]) for e in records)
        self._pending.clear()
        self._written_end = pos
        self._durable = True
        self._must_sync = False
        self.stats.rewrites += 1
        self._evict()


class _FileEntries(Sequence[Entry]):
    """A slice of the log that reaches into evicted payloads, read one entry at a time: pysyncobj
    slices from an index to the end and then looks at a few entries (its __getEntries), so a
    lagging follower's slice must not read the whole tail. Pickles as a plain list."""

    def __init__(self, journal: DurableJournal, start: int, stop: int) -> None:
        self._journal, self._start, self._stop = journal, start, stop
        self._generation = journal.generation

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, item: int) -> Entry: ...
    @overload
    def __getitem__(self, item: slice) -> Sequence[Entry]: ...

    def __getitem__(self, item: int | slice) -> Entry | Sequence[Entry]:
        assert self._generation == self._journal.generation, "log slice used after a rewrite"
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step != 1 or stop <= start:
                return [self[i] for i in range(start, stop, step)]
            return _FileEntries(self._journal, self._start + start, self._start + stop)
        if item < 0:
            item += len(self)
        if not 0 <= item < len(self):
            raise IndexError(item)
        return self._journal._entry(self._start + item)

    def __iter__(self) -> Iterator[Entry]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:  # like the list it stands for
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # unhashable, like a list

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def _good_record_after(data: bytes, bad: int, want_idx: int) -> bool:
    """Is there a valid record with index `want_idx` right after the bad record at `bad`?"""
    if bad + _REC.size > len(data):
        return False
    size = _REC.unpack_from(data, bad)[0]
    following = decode_records(data, bad + _REC.size + size)[0]
    return bool(following) and following[0][1] == want_idx


def _to_bytes(command: bytes | str) -> bytes:
    return command if isinstance(command, bytes) else command.encode()


def read_journal_entries(path: Path) -> list[Entry]:
    """Read-only parse of a journal file (tests, start-up checks)."""
    data = path.read_bytes()
    if data[: len(_HEADER)] != _HEADER:
        raise JournalError(f"journal {path} has a bad header")
    return decode_records(data, len(_HEADER))[0]
