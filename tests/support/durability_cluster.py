"""Run durability_node processes (tests/support/durability_node.py) and inspect what they wrote.

Ports from the OS, data in tmp dirs, processes killed by PID. Waiting polls with deadlines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.cluster import free_ports, wait_until

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DNode:
    node_id: str
    raft: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def acks_file(self) -> Path:
        return self.root / "acks"

    @property
    def out_file(self) -> Path:
        return self.root / "out.json"

    @property
    def stats_file(self) -> Path:
        return self.root / "stats.json"

    @property
    def stderr_file(self) -> Path:
        return self.root / "stderr.log"

    def acks(self) -> list[str]:
        if not self.acks_file.exists():
            return []
        return [line for line in self.acks_file.read_text().splitlines() if line]

    def stats(self) -> dict[str, Any] | None:
        try:
            value: dict[str, Any] = json.loads(self.stats_file.read_text())
            return value
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def describe(self) -> str:
        """For a failed wait: is it running, stopped or gone, how old its stats are, and (if it
        runs) every thread's stack, which the node dumps to its stderr on SIGUSR1."""
        if self.proc is None:
            return f"{self.node_id}: not started"
        code = self.proc.poll()
        try:
            age = f"{time.time() - self.stats_file.stat().st_mtime:.1f}s"
        except OSError:
            age = "none"
        if code is not None:
            return f"{self.node_id}: exited {code}, stats age {age}"
        try:
            state = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "?"
        os.kill(self.proc.pid, signal.SIGUSR1)
        time.sleep(1.0)
        tail = "\n".join(self.stderr_file.read_text(errors="replace").splitlines()[-80:])
        return f"{self.node_id}: pid {self.proc.pid} state {state}, stats age {age}\n{tail}"


class DCluster:
    def __init__(
        self, root: Path, size: int, *, secret: str = "", conf: dict[str, Any] | None = None
    ) -> None:
        ports = free_ports(size)
        self.nodes = [
            DNode(f"n{i + 1}", f"127.0.0.1:{p}", root / f"n{i + 1}") for i, p in enumerate(ports)
        ]
        self.secret = secret
        self.conf = conf or {}
        for node in self.nodes:
            node.root.mkdir(parents=True, exist_ok=True)
            node.data.mkdir(exist_ok=True)

    def start(self, node: DNode, mode: str, *extra: str, env: dict[str, str] | None = None,
              secret: str | None = None) -> None:
        assert not node.alive()
        node.out_file.unlink(missing_ok=True)
        node.stats_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "tests.support.durability_node", "--id", node.node_id,
                "--raft", node.raft, "--data", str(node.data), "--mode", mode,
                "--acks", str(node.acks_file), "--out", str(node.out_file),
                "--stats", str(node.stats_file), "--conf", json.dumps(self.conf)]
        for other in self.nodes:
            if other is not node:
                args += ["--peer", f"{other.node_id}={other.raft}"]
        chosen = self.secret if secret is None else secret
        if chosen:
            args += ["--secret", chosen]
        full_env = {**os.environ, **(env or {})}
        with open(node.stderr_file, "ab") as err:
            node.proc = subprocess.Popen([*args, *extra], cwd=REPO, env=full_env,
                                         stdout=subprocess.DEVNULL, stderr=err)

    def start_all(self, mode: str, *extra: str, env: dict[str, str] | None = None) -> None:
        for node in self.nodes:
            self.start(node, mode, *extra, env=env)

    def kill(self, node: DNode) -> None:
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)
        node.proc = None

    def kill_all(self) -> None:
        for node in self.nodes:
            self.kill(node)

    def leader(self) -> DNode | None:
        for node in self.nodes:
            stats = node.stats()
            if node.alive() and stats and stats["leader"]:
                return node
        return None

    def verify_all(self, timeout_s: float = 60, env: dict[str, str] | None = None
                   ) -> dict[str, set[str]]:
        """Start every node in verify mode; return the ids each one applied."""
        self.start_all("verify", env=env)
        wait_until(lambda: all(n.out_file.exists() for n in self.nodes), timeout_s=timeout_s,
                   what="every node to commit its barrier and write its state")
        result = {n.node_id: set(json.loads(n.out_file.read_text())["ids"]) for n in self.nodes}
        self.kill_all()
        return result


def wait_or_describe(fn: Callable[[], T | None], nodes: list[DNode], timeout_s: float,
                     what: str) -> T:
    """wait_until; on a timeout the failure also says where each node was (describe) and
    what its counters were, since a stuck node leaves nothing else behind."""
    try:
        return wait_until(fn, timeout_s=timeout_s, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(
            f"{n.describe()}\nstats {n.stats()}" for n in nodes)) from None


def wait_acks(nodes: list[DNode], count: int, timeout_s: float = 60) -> None:
    wait_until(lambda: sum(len(n.acks()) for n in nodes) >= count, timeout_s=timeout_s,
               what=f"{count} acknowledged entries")


def wait_exit(node: DNode, timeout_s: float = 30) -> int:
    assert node.proc is not None
    deadline = time.monotonic() + timeout_s
    while node.proc.poll() is None:
        assert time.monotonic() < deadline, f"{node.node_id} did not exit"
        time.sleep(0.02)
    code = node.proc.returncode
    node.proc = None
    return code


# -- power-loss reconstruction ----------------------------------------------------------------
def rebuild_from_shadow(data_dir: Path, shadow_dir: Path) -> dict[str, int]:
    """Replace data_dir with what its last directory fsync bound, each name holding the bytes
    its inode had at its last fsync (replication/journal.py records both). A rename that no
    directory fsync followed is lost; a file never fsync'd is empty. Returns name -> size."""
    listing: dict[str, int] = {}
    want = str(data_dir.resolve())
    for record in shadow_dir.glob("dir-*.json"):
        value = json.loads(record.read_text())
        if value["path"] == want:
            listing = value["entries"]
    shutil.rmtree(data_dir)
    data_dir.mkdir()
    sizes = {}
    for name, ino in sorted(listing.items()):
        shadow = shadow_dir / f"ino-{ino}"
        content = shadow.read_bytes() if shadow.exists() else b""
        (data_dir / name).write_bytes(content)
        sizes[name] = len(content)
    return sizes
