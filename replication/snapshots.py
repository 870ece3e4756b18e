"""Snapshot files: our format, written by a forked child, verified at load.

pysyncobj hooks used (SyncObjConf `serializer`, `deserializer`, `serializeChecker`):
* `serializer(tmpFile, (last, prev, cluster))` runs in the raft thread (serializer.py:84). We
  `os.fork()`: the child asks the replica for its state bytes (`SnapshotHooks.encode`, from the
  copy-on-write image, consistent because applies run on this same raft thread), writes our
  file to `<dump>.tmp.<pid>`, fsyncs it, renames it over `<dump>`, fsyncs the directory and
  `_exit(0)`s. The parent returns at once: the node never stalls on a snapshot.
* `serializeChecker()` reaps the child with `waitpid(WNOHANG)`: SERIALIZING while it runs,
  SUCCESS only after exit status 0, i.e. after the directory fsync. Only then does pysyncobj
  compact the journal (`deleteEntriesTo`), so the journal never drops entries the durable
  snapshot does not cover.
* `deserializer(dumpFile)` verifies the file, calls `SnapshotHooks.install(state)` and returns
  `(last, prev, cluster)` as pysyncobj expects (`__loadDumpFile`, syncobj.py:1460).

File: MAGIC(8) | version u32 | meta_len u32 | state_len u64 | crc32 u32 | meta | state.
`meta` = msgpack [last entry, prev entry, cluster ids]; crc32 covers meta and state.
A corrupt file is an error at start-up (`check_data_dir`) and never replaces ours when received.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj.node import TCPNode

from replication import journal as jr

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"RMQSNAP\x00"
SNAPSHOT_VERSION = 1
_HEAD = struct.Struct("<8sIIQI")  # magic, version, meta_len, state_len, crc32
SNAPSHOT_LOAD_FAILED_EXIT_CODE = 78  # EX_CONFIG: a snapshot we must load is corrupt
SNAPSHOT_DELAY_ENV = "RAFTMQ_TEST_SNAPSHOT_DELAY_MS"  # test only: widen the crash windows
# The child encodes the whole state (seconds with a million messages) while its parent keeps
# answering Raft: it yields the CPU to its parent's heartbeats and acks.
SNAPSHOT_CHILD_NICE = 10

# pysyncobj.config.SERIALIZER_STATE values (asserted in hardening._assert_serializer_states)
NOT_SERIALIZING, SERIALIZING, SUCCESS, FAILED = 0, 1, 2, 3


class SnapshotError(Exception):
    """A snapshot file is unreadable or corrupt: the node refuses to start from it."""


@dataclass
class SnapshotHooks:
    """What the replica gives the hardening layer.

    encode(): the broker state snapshot bytes (storage BrokerState.encode_snapshot). Called in
      the forked child: it must not take locks that other threads of the parent may hold.
    install(data): replace the replica's state (dump loaded at start or received from the leader).
      Called on the raft thread.
    """

    encode: Callable[[], bytes]
    install: Callable[[bytes], None]


@dataclass
class SnapshotFile:
    last: tuple[bytes, int, int]
    prev: tuple[bytes, int, int]
    cluster: list[str]
    state: bytes


def encode_file(snap: SnapshotFile) -> list[bytes]:
    """The file as parts (header, meta, state), so the state bytes are never copied."""
    meta = msgpack.packb([list(snap.last), list(snap.prev), snap.cluster], use_bin_type=True)
    crc = zlib.crc32(snap.state, zlib.crc32(meta))
    head = _HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(meta), len(snap.state), crc)
    return [head, meta, snap.state]


def decode_file(data: bytes, *, where: str = "snapshot") -> SnapshotFile:
    if len(data) < _HEAD.size:
        raise SnapshotError(f"{where}: file too short ({len(data)} bytes)")
    magic, version, meta_len, state_len, crc = _HEAD.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError(f"{where}: not a raftmq snapshot (bad magic)")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"{where}: snapshot format version {version} is not supported")
    if len(data) != _HEAD.size + meta_len + state_len:
        raise SnapshotError(f"{where}: length mismatch (truncated or extended file)")
    meta = data[_HEAD.size : _HEAD.size + meta_len]
    state = data[_HEAD.size + meta_len :]
    if zlib.crc32(state, zlib.crc32(meta)) != crc:
        raise SnapshotError(f"{where}: checksum mismatch (corrupt snapshot)")
    last, prev, cluster = msgpack.unpackb(meta, raw=False)
    return SnapshotFile(_entry(last), _entry(prev), list(cluster), state)


def _entry(raw: list[Any]) -> tuple[bytes, int, int]:
    cmd, idx, term = raw
    assert isinstance(cmd, bytes) and isinstance(idx, int) and isinstance(term, int)
    return (cmd, idx, term)


def read_snapshot_file(path: Path) -> SnapshotFile:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SnapshotError(f"snapshot {path}: cannot read: {err}") from err
    return decode_file(data, where=f"snapshot {path}")


def verify_snapshot_file(path: Path) -> None:
    read_snapshot_file(path)


def write_snapshot_file(path: Path, snap: SnapshotFile) -> None:
    """tmp, fsync, rename, directory fsync; crash points name each step for the kill tests."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    fd = jr.create_file(tmp)
    try:
        for part in encode_file(snap):
            jr.write_all(fd, part)
        jr.crash_point("snapshot.after_write")
        jr.fsync(fd)
    finally:
        os.close(fd)
    jr.crash_point("snapshot.after_fsync")
    os.replace(tmp, path)
    jr.crash_point("snapshot.after_rename")
    jr.fsync_dir(path.parent)
    jr.crash_point("snapshot.after_dirsync")


def kill_quietly(pid: int) -> None:
    """SIGKILL a forked child that may have exited already."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


class ForkSnapshotter:
    """serializer / serializeChecker / deserializer for one SyncObj."""

    def __init__(self, dump_file: Path, hooks: SnapshotHooks) -> None:
        self.dump_file = dump_file
        self.hooks = hooks
        self._pid = 0
        self._fork_failed = False
        self._started_s = 0.0
        self.last_duration_s = 0.0
        self.count_ok = 0
        self.count_failed = 0

    def serialize(self, tmp_file: str, data: tuple[Any, Any, Any]) -> None:
        """pysyncobj's `serializer`: fork; the child writes the snapshot; the parent returns."""
        assert self._pid == 0, "pysyncobj started a second snapshot while one runs"
        last, prev, cluster = data
        ids = sorted(str(getattr(node, "id", node)) for node in cluster)
        self._started_s = time.monotonic()
        try:
            pid = os.fork()
        except OSError as err:  # e.g. ENOMEM: report FAILED once, pysyncobj retries later
            log.error("snapshot_fork_failed error=%s", err)
            self._fork_failed = True
            return
        if pid == 0:
            self._child(SnapshotFile(tuple(last), tuple(prev), ids, b""))
        self._pid = pid

    def _child(self, snap: SnapshotFile) -> None:
        code = 1
        try:
            gc.disable()  # it exits when done: a collection would only copy-on-write pages
            os.nice(SNAPSHOT_CHILD_NICE)
            delay_ms = int(os.environ.get(SNAPSHOT_DELAY_ENV, "0"))
            if delay_ms:
                time.sleep(delay_ms / 1000)
            jr.crash_point("snapshot.child_start")
            snap.state = self.hooks.encode()
            write_snapshot_file(self.dump_file, snap)
            code = 0
        except BaseException as err:  # noqa: BLE001 - a child must never return into pysyncobj
            os.write(2, f"raftmq snapshot child failed: {err!r}\n".encode())
        finally:
            os._exit(code)

    def check(self) -> int:
        """pysyncobj's `serializeChecker`."""
        if self._fork_failed:
            self._fork_failed = False
            self.count_failed += 1
            return FAILED  # pysyncobj resets its state; without this it never snapshots again
        if self._pid == 0:
            return NOT_SERIALIZING
        pid, status = os.waitpid(self._pid, os.WNOHANG)
        if pid == 0:
            return SERIALIZING
        self._pid = 0
        self.last_duration_s = time.monotonic() - self._started_s
        if os.waitstatus_to_exitcode(status) == 0:
            self.count_ok += 1
            log.info("snapshot_written file=%s s=%.3f", self.dump_file, self.last_duration_s)
            return SUCCESS
        self.count_failed += 1
        log.error("snapshot_failed file=%s status=%d", self.dump_file, status)
        return FAILED

    def deserialize(self, dump_file: str) -> tuple[Any, Any, list[Any]]:
        """pysyncobj's `deserializer`: verify, install the state, return (last, prev, cluster).

        pysyncobj swallows exceptions from here and would carry on with an empty state
        (syncobj.py:1510), so a failure is fatal: the node exits instead of serving wrong data.
        (Start-up checks the file first, `check_data_dir`, and a received snapshot is verified
        before it replaces ours, so this only fires if the disk changes under us.)
        """
        try:
            snap = read_snapshot_file(Path(dump_file))
            self.hooks.install(snap.state)
        except Exception as err:
            log.critical("snapshot_load_failed file=%s error=%r: exiting", dump_file, err)
            os._exit(SNAPSHOT_LOAD_FAILED_EXIT_CODE)
        log.info("snapshot_loaded file=%s last_idx=%d", dump_file, snap.last[1])
        return snap.last, snap.prev, [TCPNode(addr) for addr in snap.cluster]

    def abandon(self) -> None:
        """Kill and reap a running child: its snapshot must never land (a re-sync)."""
        if self._pid:
            kill_quietly(self._pid)
        self.close()

    def close(self) -> None:
        """Reap a running child (node shutdown)."""
        if self._pid:
            os.waitpid(self._pid, 0)
            self._pid = 0
