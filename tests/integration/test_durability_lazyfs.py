"""The journal on the chaos harness's lazy FUSE file system: power loss keeps what fsync made
durable, and nothing the file system invents (seed 18 ruled out a lazyfs artefact this way).

A real ext4 after a power cut keeps a file's fsync'd bytes and size, and a rename once its
directory is fsync'd. chaos/lazyfs.py keeps exactly the fsync'd bytes per file and treats
namespace operations as durable at once (more lenient than ext4: it cannot show a missing
directory fsync, but every state it leaves is one ext4 could leave). These tests drive
`DurableJournal` and `write_file_atomic` through a real mount, "crash" it as the harness does
(process gone, then the control file), and reopen. Needs /dev/fuse, fusermount3 and mfusepy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.lazyfs import LazyMount, unavailable_reason
from replication.journal import DurableJournal, MetaFile, read_journal_entries, write_all


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[LazyMount]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"power loss needs the lazy FUSE fs: {reason}")
    lazy = LazyMount(tmp_path / "mnt", tmp_path / "lazyfs.log")
    try:
        lazy.mount()
    except RuntimeError as exc:  # e.g. no permission to mount in this container
        pytest.skip(f"cannot mount the lazy FUSE fs here: {exc}")
    try:
        yield lazy
    finally:
        lazy.unmount()


def _entry(i: int) -> tuple[bytes, int, int]:
    return (f"cmd-{i}".encode() * 7, i, 1 + i // 10)


def _kill(journal: DurableJournal) -> None:
    """kill -9: the descriptor goes away, pending bytes are never written, nothing is synced."""
    os.close(journal._fd)
    journal._fd = -1


def test_power_loss_keeps_exactly_the_synced_journal_and_appends_after_it(
        mount: LazyMount) -> None:
    path = mount.mountpoint / "raft.journal"
    j = DurableJournal(path)
    for i in range(1, 21):
        j.add(*_entry(i))
    j.sync()
    for i in range(21, 31):
        j.add(*_entry(i))
    j.sync()
    write_all(j._fd, b"\x01" * 100)  # written (page cache) but never fsync'd
    _kill(j)
    mount.crash()
    assert [e[1] for e in read_journal_entries(path)] == list(range(1, 31))
    assert path.stat().st_size == len(path.read_bytes())  # the kernel sees the durable size
    j2 = DurableJournal(path)  # restart: appends land right after the last durable record
    assert j2.stats.torn_bytes_dropped == 0 and len(j2) == 30
    for i in range(31, 36):
        j2.add(*_entry(i))
    j2.sync()
    _kill(j2)
    mount.crash()
    assert [e[1] for e in read_journal_entries(path)] == list(range(1, 36)), "no gap, no zeros"


def test_a_cut_and_a_different_tail_are_durable_together(mount: LazyMount) -> None:
    path = mount.mountpoint / "raft.journal"
    j = DurableJournal(path)
    for i in range(1, 11):
        j.add(*_entry(i))
    j.sync()
    j.deleteEntriesFrom(5)  # the leader's entry 6 differs: the file is cut there on add
    j.add(b"other", 6, 9)
    j.sync()
    _kill(j)
    mount.crash()
    entries = read_journal_entries(path)
    assert [e[1] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[-1] == (b"other", 6, 9)


def test_meta_written_atomically_survives_and_an_unsynced_temp_file_is_empty(
        mount: LazyMount) -> None:
    meta_path = mount.mountpoint / "raft.journal.meta"
    meta = MetaFile(meta_path)
    meta.values.update(term=7, vote="n2", commit=30)
    meta.store()  # tmp + fsync + rename + directory fsync
    stray = mount.mountpoint / "raft.snapshot.tmp.123"
    stray.write_bytes(b"never synced")
    mount.crash()
    assert MetaFile(meta_path).values == {"term": 7, "vote": "n2", "commit": 30}
    assert stray.read_bytes() == b"", "an unsynced new file survives empty (Jepsen lazyfs model)"
