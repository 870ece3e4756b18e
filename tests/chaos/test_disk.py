"""The disk-full fault's small file systems: a balloon really fills them, and deflating frees."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import disk
from chaos.faults import FAMILIES, kinds_for

pytestmark = pytest.mark.chaos


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    reason = disk.unavailable_reason()
    if reason:
        pytest.skip(f"disk-full fault unavailable: {reason}")
    disks = disk.SmallDisks(size_mb=4)
    path = tmp_path / "data-n1"
    disks.add(1, path)
    try:
        yield path
    finally:
        disks.unmount_all()
        assert not os.path.ismount(path)


def append(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        view = memoryview(b"x" * size)
        while view:  # like the journal's write_all: a short write is followed by ENOSPC
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def test_balloon_makes_writes_fail_with_enospc_until_deflated(small_disk: Path) -> None:
    assert os.path.ismount(small_disk)
    append(small_disk / "raft.journal", 1000)
    size = disk.inflate(small_disk)
    assert 3 << 20 < size <= 4 << 20
    with pytest.raises(OSError) as caught:
        append(small_disk / "raft.journal", 4096)
    assert caught.value.errno == errno.ENOSPC
    assert disk.deflate(small_disk) is True
    append(small_disk / "raft.journal", 4096)  # space is back
    assert (small_disk / "raft.journal").stat().st_size >= 1000 + 4096
    assert disk.deflate(small_disk) is False


def test_disk_full_family_expands_to_its_kinds() -> None:
    assert kinds_for(["disk-full"], 3) == ["disk-full-one", "disk-full-leader", "disk-full-inodes"]
    assert "disk-full" in FAMILIES


def test_journal_exits_when_it_cannot_create_a_file(tmp_path: Path) -> None:
    """Regression (disk-full-inodes run, 2026-11-29): with the file system out of inodes,
    creating `raft.journal.meta.tmp` failed with ENOSPC, the OSError escaped into pysyncobj,
    which logged it every second and carried on with its term and vote not persisted. The
    journal must exit (code 75) as for every other failed durable write."""
    import subprocess
    import sys

    from replication.journal import FATAL_IO_EXIT_CODE

    (tmp_path / "raft.journal.meta.tmp").mkdir()  # os.open(O_CREAT|O_TRUNC) on it fails
    probe = ("import sys; from replication.journal import DurableJournal\n"
             "j = DurableJournal(sys.argv[1])\n"
             "j.setCurrentTerm(2, 'n1')\n"
             "print('carried on')\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "raft.journal")],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == FATAL_IO_EXIT_CODE, done.stderr[-2000:]
    assert "carried on" not in done.stdout
    assert "durable_io_failed what=create" in done.stderr
