"""A "lazy" FUSE file system that forgets every write not fsync'd: simulated power loss.

Each node's data dir is mounted through one of these (`python -m chaos.lazyfs MOUNTPOINT`).
Files live in memory in two versions: the bytes processes see, and the bytes the last
``fsync``/``fdatasync`` of that file made durable. Writing ``crash`` to the hidden control file
``MOUNTPOINT/.lazyfs-control`` replaces every file's content by its durable version, which is
what a power cut does to data still in the page cache. The harness does that right after
``kill -9`` of the node (the process must not see the old bytes again).

Model (like Jepsen's lazyfs): file DATA is cached until fsync; namespace operations (create,
rename, unlink, mkdir) are durable at once, so a file created and never fsync'd survives a
crash empty. Torn writes are not modelled. The mount uses direct_io with zero attribute and
entry timeouts, so the kernel keeps no page cache of its own that would survive the "crash".
Everything is in the FUSE process's memory: unmounting discards the data.

Needs `/dev/fuse`, the Debian package fuse3 and the PyPI package mfusepy.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROL_NAME = ".lazyfs-control"
MOUNT_WAIT_S = 10.0
UNMOUNT_WAIT_S = 10.0


def unavailable_reason() -> str | None:
    """Why power-loss simulation cannot run here, or None."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing (power loss needs FUSE)"
    if not any(Path(d, "fusermount3").exists() for d in ("/usr/bin", "/bin")):
        return "fusermount3 is missing (Debian package fuse3)"
    try:
        import mfusepy  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"the Python package mfusepy is not importable ({exc}); pip install mfusepy"
    return None


@dataclass
class Inode:
    is_dir: bool
    mode: int
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    mtime_ns: int = field(default_factory=time.time_ns)


class LazyOps:
    """mfusepy Operations over an in-memory tree (flat dict: path -> Inode)."""

    use_ns = True

    def __init__(self) -> None:
        self.tree: dict[str, Inode] = {"/": Inode(True, stat.S_IFDIR | 0o755)}
        self._mutex = threading.Lock()
        self.crashes = 0

    # -- helpers ----------------------------------------------------------------------------
    def _get(self, path: str) -> Inode:
        node = self.tree.get(path)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _parent_ok(self, path: str) -> None:
        parent = self.tree.get(os.path.dirname(path) or "/")
        if parent is None or not parent.is_dir:
            raise _err(errno.ENOENT)

    def crash(self) -> None:
        """Power loss: every file keeps only what its last fsync made durable."""
        for node in self.tree.values():
            if not node.is_dir:
                node.data = bytearray(node.durable)
        self.crashes += 1

    # -- metadata ---------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/" + CONTROL_NAME:
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0}
        with self._mutex:
            node = self._get(path)
            return {"st_mode": node.mode, "st_nlink": 2 if node.is_dir else 1,
                    "st_size": len(node.data), "st_mtime": node.mtime_ns,
                    "st_ctime": node.mtime_ns, "st_atime": node.mtime_ns,
                    "st_uid": os.getuid(), "st_gid": os.getgid()}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mutex:
            self._get(path)
            prefix = path.rstrip("/") + "/"
            names = [p[len(prefix):] for p in self.tree
                     if p.startswith(prefix) and p != prefix and "/" not in p[len(prefix):]]
            return [".", "..", *sorted(names)]

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            self._parent_ok(path)
            if path in self.tree:
                raise _err(errno.EEXIST)
            self.tree[path] = Inode(True, stat.S_IFDIR | (mode & 0o7777))
        return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            node = self._get(path)
            if not node.is_dir:
                raise _err(errno.ENOTDIR)
            if any(p.startswith(path + "/") for p in self.tree):
                raise _err(errno.ENOTEMPTY)
            del self.tree[path]
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mutex:
            self._parent_ok(path)
            if path not in self.tree:
                self.tree[path] = Inode(False, stat.S_IFREG | (mode & 0o7777))
        return 0

    def open(self, path: str, flags: int) -> int:
        if path == "/" + CONTROL_NAME:
            return 0
        with self._mutex:
            self._get(path)
        return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            node = self._get(path)
            if node.is_dir:
                raise _err(errno.EISDIR)
            del self.tree[path]
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            node = self._get(old)
            self._parent_ok(new)
            moved = {p: n for p, n in self.tree.items() if p == old or p.startswith(old + "/")}
            for p in moved:
                del self.tree[p]
            for p, n in moved.items():
                self.tree[new + p[len(old):]] = n
            assert self.tree[new] is node
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            node = self._get(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                "f_bavail": 1 << 19, "f_files": 1 << 16, "f_ffree": 1 << 15, "f_namemax": 255}

    # -- data -------------------------------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return bytes(self._get(path).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path == "/" + CONTROL_NAME:
            with self._mutex:
                if data.strip() == b"crash":
                    self.crash()
                    return len(data)
            raise _err(errno.EINVAL)
        with self._mutex:
            node = self._get(path)
            end = offset + len(data)
            if len(node.data) < offset:
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset:end] = data
            node.mtime_ns = time.time_ns()
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if path == "/" + CONTROL_NAME:
            return 0
        with self._mutex:
            node = self._get(path)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(b"\0" * (length - len(node.data)))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            node = self._get(path)
            node.durable = bytes(node.data)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0


def _err(code: int) -> OSError:
    import mfusepy

    return mfusepy.FuseOSError(code)  # type: ignore[no-any-return]


def serve(mountpoint: str) -> None:
    import mfusepy

    mfusepy.FUSE(LazyOps(), mountpoint, foreground=True, nothreads=True, direct_io=True,
                 attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="chaos-lazyfs")


# -- harness side -------------------------------------------------------------------------------


@dataclass
class LazyMount:
    mountpoint: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chaos.lazyfs", str(self.mountpoint)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint}; see {self.log_path}")
            time.sleep(0.05)

    def crash(self) -> None:
        """Drop every unsynced write (call only while no process uses the mount)."""
        with open(self.mountpoint / CONTROL_NAME, "wb", buffering=0) as fh:
            fh.write(b"crash")

    def unmount(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                           capture_output=True, check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=UNMOUNT_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class LazyMounts:
    """One lazy mount per node data dir (index -> mount)."""

    mounts: dict[int, LazyMount] = field(default_factory=dict)

    def add(self, index: int, data_dir: Path, log_path: Path) -> None:
        mount = LazyMount(data_dir, log_path)
        mount.mount()
        self.mounts[index] = mount

    def lose_unsynced(self, index: int) -> None:
        self.mounts[index].crash()

    def unmount_all(self) -> None:
        for mount in self.mounts.values():
            mount.unmount()


if __name__ == "__main__":
    serve(sys.argv[1])
