"""Small file systems for the disk-full fault: one size-limited tmpfs per node data dir.

A run whose schedule has a disk-full fault mounts a tmpfs of `DISK_SIZE_MB` on each node's data
dir (unless that dir is already a lazy FUSE mount for power loss: that one has no capacity).
The fault fills the target's file system with a balloon file until writes fail with ENOSPC; the
heal deletes the balloon. The mounts are removed at the end of the run (their data is lost,
like the lazy mounts' data).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

DISK_SIZE_MB = 128  # a node's data dir in a 60 s run stays far below this
DISK_INODES = 2048  # files a node's data dir may hold (a handful are used)
BALLOON_NAME = ".chaos-balloon"
INODE_BALLOON_NAME = ".chaos-inodes"
BALLOON_CHUNK_BYTES = 1 << 20
UMOUNT_TIMEOUT_S = 10.0


def unavailable_reason() -> str | None:
    """Why size-limited tmpfs mounts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the disk-full fault needs root (mount -t tmpfs)"
    if not Path("/proc/filesystems").exists() or "tmpfs" not in Path(
            "/proc/filesystems").read_text():
        return "this kernel has no tmpfs"
    return None


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def inflate(path: Path) -> int:
    """Fill the file system holding `path` with `path/BALLOON_NAME`; returns its size.

    Writes until the kernel answers ENOSPC, so the file system is really full (statvfs is
    only a hint); the balloon is fsync'd so its blocks are allocated.
    """
    balloon = path / BALLOON_NAME
    chunk = b"\0" * BALLOON_CHUNK_BYTES
    fd = os.open(balloon, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                written = os.write(fd, chunk)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
                continue
            assert written > 0, written
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    size = balloon.stat().st_size
    assert free_bytes(path) < BALLOON_CHUNK_BYTES, free_bytes(path)
    return size


def inflate_inodes(path: Path) -> int:
    """Use up every free inode of the file system holding `path` (empty files in
    `path/INODE_BALLOON_NAME/`): creating a file then fails with ENOSPC although there is
    space. Returns how many files it made."""
    folder = path / INODE_BALLOON_NAME
    folder.mkdir(exist_ok=True)
    made = 0
    while True:
        try:
            os.close(os.open(folder / f"f{made}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            break
        made += 1
        assert made <= DISK_INODES, made
    return made


def deflate(path: Path) -> bool:
    """Remove the balloons (space and inodes); True if there was one."""
    found = False
    balloon = path / BALLOON_NAME
    if balloon.exists():
        balloon.unlink()
        found = True
    folder = path / INODE_BALLOON_NAME
    if folder.exists():
        shutil.rmtree(folder)
        found = True
    return found


@dataclass
class SmallDisks:
    """One tmpfs of `size_mb` per node data dir (index -> mount point)."""

    size_mb: int = DISK_SIZE_MB
    mounts: dict[int, Path] = field(default_factory=dict)

    def add(self, index: int, data_dir: Path) -> None:
        assert index not in self.mounts, index
        assert self.size_mb > 0, self.size_mb
        data_dir.mkdir(parents=True, exist_ok=True)
        options = f"size={self.size_mb}m,nr_inodes={DISK_INODES},mode=0755"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options,
                        f"chaos-disk-{index}", str(data_dir)], check=True,
                       capture_output=True, text=True)
        self.mounts[index] = data_dir

    def unmount_all(self) -> None:
        for path in self.mounts.values():
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False,
                               timeout=UMOUNT_TIMEOUT_S)
        self.mounts.clear()
