"""Snapshot files: format (magic, version, crc32), forked writer, verified load, start-up checks."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from replication import hardening, patches
from replication.journal import DurableJournal, JournalError
from replication.snapshots import (
    FAILED,
    NOT_SERIALIZING,
    SERIALIZING,
    SUCCESS,
    ForkSnapshotter,
    SnapshotError,
    SnapshotFile,
    SnapshotHooks,
    decode_file,
    encode_file,
    read_snapshot_file,
    write_snapshot_file,
)

LAST = (b"\x00cmd-last", 41, 3)
PREV = (b"\x00cmd-prev", 40, 3)


def sample(state: bytes = b"state-bytes") -> SnapshotFile:
    return SnapshotFile(LAST, PREV, ["127.0.0.1:1", "127.0.0.1:2"], state)


def test_roundtrip() -> None:
    snap = decode_file(b"".join(encode_file(sample())))
    assert snap == sample()


@pytest.mark.parametrize("offset", [0, 9, 30, -1])
def test_any_flipped_byte_is_detected(offset: int) -> None:
    data = bytearray(b"".join(encode_file(sample())))
    data[offset] ^= 0x01
    with pytest.raises(SnapshotError):
        decode_file(bytes(data))


def test_truncated_file_is_detected() -> None:
    data = b"".join(encode_file(sample()))
    with pytest.raises(SnapshotError, match="length mismatch"):
        decode_file(data[:-1])
    with pytest.raises(SnapshotError, match="too short"):
        decode_file(data[:5])


def test_unknown_version_is_refused() -> None:
    data = bytearray(b"".join(encode_file(sample())))
    struct.pack_into("<I", data, 8, 99)
    with pytest.raises(SnapshotError, match="version 99"):
        decode_file(bytes(data))


def test_write_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "raft.snapshot"
    write_snapshot_file(path, sample(b"one"))
    write_snapshot_file(path, sample(b"two"))
    assert read_snapshot_file(path).state == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["raft.snapshot"]


def wait_done(snap: ForkSnapshotter, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = snap.check()
        if status != SERIALIZING:
            return status
        time.sleep(0.01)
    raise AssertionError("snapshot child did not finish")


def test_forked_child_writes_state_and_checker_reports(tmp_path: Path) -> None:
    dump = tmp_path / "raft.snapshot"
    installed: list[bytes] = []
    hooks = SnapshotHooks(encode=lambda: b"S" * 1000, install=installed.append)
    snap = ForkSnapshotter(dump, hooks)
    assert snap.check() == NOT_SERIALIZING
    snap.serialize(str(dump) + ".tmp", (LAST, PREV, ["127.0.0.1:9"]))
    assert wait_done(snap) == SUCCESS
    assert snap.check() == NOT_SERIALIZING
    last, prev, cluster = snap.deserialize(str(dump))
    assert (last, prev) == (LAST, PREV)
    assert [n.id for n in cluster] == ["127.0.0.1:9"]
    assert installed == [b"S" * 1000]


def test_failing_encode_reports_failed_and_keeps_old_snapshot(tmp_path: Path) -> None:
    dump = tmp_path / "raft.snapshot"
    write_snapshot_file(dump, sample(b"old"))

    def boom() -> bytes:
        raise RuntimeError("encode failed")

    snap = ForkSnapshotter(dump, SnapshotHooks(encode=boom, install=lambda d: None))
    snap.serialize(str(dump) + ".tmp", (LAST, PREV, []))
    assert wait_done(snap) == FAILED
    assert read_snapshot_file(dump).state == b"old"


def test_check_data_dir_refuses_corrupt_snapshot(tmp_path: Path) -> None:
    dump = tmp_path / hardening.SNAPSHOT_FILE_NAME
    write_snapshot_file(dump, sample())
    hardening.check_data_dir(tmp_path)
    data = bytearray(dump.read_bytes())
    data[-3] ^= 0x10
    dump.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="checksum"):
        hardening.check_data_dir(tmp_path)


def test_check_data_dir_refuses_compacted_journal_without_snapshot(tmp_path: Path) -> None:
    j = DurableJournal(tmp_path / hardening.JOURNAL_FILE_NAME)
    for i in range(1, 11):
        j.add(b"c", i, 1)
    j.deleteEntriesTo(5)
    j.close()
    with pytest.raises(JournalError, match="snapshot .* is missing"):
        hardening.check_data_dir(tmp_path)


def test_received_corrupt_snapshot_never_replaces_ours(tmp_path: Path) -> None:
    ours = tmp_path / "raft.snapshot"
    write_snapshot_file(ours, sample(b"ours"))
    received = tmp_path / "raft.snapshot.1.tmp"
    data = bytearray(b"".join(encode_file(sample(b"theirs"))))
    data[-1] ^= 0xFF
    received.write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        patches.durable_replace(str(received), str(ours))
    assert read_snapshot_file(ours).state == b"ours"
    received.write_bytes(b"".join(encode_file(sample(b"theirs"))))
    assert patches.durable_replace(str(received), str(ours))
    assert read_snapshot_file(ours).state == b"theirs"


def test_pysyncobj_rename_after_forked_serializer_is_a_noop(tmp_path: Path) -> None:
    ours = tmp_path / "raft.snapshot"
    write_snapshot_file(ours, sample(b"ours"))
    patches.register_fork_managed_dump(str(ours))
    assert patches.durable_replace(str(ours) + ".tmp", str(ours))
    assert read_snapshot_file(ours).state == b"ours"
    assert os.listdir(tmp_path) == ["raft.snapshot"]


def test_check_data_dir_removes_temp_files_of_interrupted_writes(tmp_path: Path) -> None:
    write_snapshot_file(tmp_path / "raft.snapshot", sample())
    leftovers = ["raft.snapshot.tmp.1234", "raft.snapshot.1.tmp", "raft.journal.tmp",
                 "raft.journal.meta.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"partial")
    hardening.check_data_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft.snapshot"]


def test_failed_fork_is_reported_once_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pysyncobj keeps its serializer 'busy' until the checker says SUCCESS or FAILED."""
    snap = ForkSnapshotter(tmp_path / "raft.snapshot", SnapshotHooks(lambda: b"", lambda d: None))

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    snap.serialize(str(tmp_path / "raft.snapshot.tmp"), (LAST, PREV, []))
    assert snap.check() == FAILED
    assert snap.check() == NOT_SERIALIZING
