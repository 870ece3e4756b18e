"""Node processes of a chaos run: config file, start, kill -9, pause, resume, data dirs.

Each node runs as `ip netns exec <ns> raftmq node --config FILE --id nI --data-dir DIR` in its
own session (process group), so `kill -9` reaches the node and anything it forks. Every
process is signalled by its own PID / process group, never by name.

Nodes run from a copy of the code taken at the first start (`freeze_code`, PYTHONPATH): a
source edit during a run must never reach a node restarted mid-run, or replicas replay one log
with two versions of apply() and diverge (seed 18, docs/reliability.md finding 5).
"""

from __future__ import annotations

import compileall
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from chaos.netns import Network, node_address

FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1")
FAKETIME_CACHE_S = 1  # libfaketime re-reads the offset file at most this often
RAFT_PORT = 7801
HTTP_PORT = 8701
STOP_WAIT_S = 10.0
PROJECT_ROOT = Path(__file__).resolve().parents[1]
FROZEN_PACKAGES = ("node", "raftmq", "replication", "storage")  # what a node process imports
_NOT_CODE = shutil.ignore_patterns("__pycache__", "*.pyc")


def faketime_lib() -> str | None:
    """libfaketime (Debian package faketime), or None when it is not installed."""
    return next((lib for lib in FAKETIME_LIBS if Path(lib).exists()), None)


def default_node_cmd() -> list[str]:
    """`raftmq` next to the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "raftmq"
    if beside.exists():
        return [str(beside), "node"]
    found = shutil.which("raftmq")
    return [found, "node"] if found else [sys.executable, "-m", "node.cli", "node"]


def freeze_code(dest: Path, root: Path = PROJECT_ROOT,
                packages: tuple[str, ...] = FROZEN_PACKAGES) -> str:
    """Copy the packages a node imports into `dest` (compiled once); return their sha256.

    The fingerprint covers every copied file's path and bytes, so two runs with the same
    fingerprint ran the same node code."""
    assert packages and not dest.exists(), dest
    digest = hashlib.sha256()
    for name in packages:
        shutil.copytree(root / name, dest / name, ignore=_NOT_CODE)
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    compileall.compile_dir(dest, quiet=1)  # once here, not by every node at once
    return digest.hexdigest()


@dataclass
class NodeProc:
    index: int
    node_id: str
    address: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False
    killed: bool = False  # down because the harness killed it
    starts: int = 0
    log_fh: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{HTTP_PORT}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    net: Network
    workdir: Path
    node_cmd: list[str] = field(default_factory=default_node_cmd)
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: list[NodeProc] = field(default_factory=list)
    config_path: Path = Path()
    clock_control: bool = False  # preload libfaketime so each node's wall clock can be moved
    freeze: bool = True  # run nodes from a copy of the code taken at the first start
    code_fingerprint: str = ""  # sha256 of that copy ("" until frozen, or when not frozen)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.net.nodes + 1):
            self.nodes.append(NodeProc(
                index=i, node_id=f"n{i}", address=node_address(i),
                data_dir=self.workdir / f"data-n{i}", log_path=self.workdir / f"n{i}.log"))
        self.config_path = self.workdir / "cluster.toml"
        self.config_path.write_text(self.render_config())

    def render_config(self) -> str:
        lines = ['cluster = "chaos"', f'raft_secret = "{secrets.token_hex(16)}"']
        for n in self.nodes:
            lines += ["", "[[nodes]]", f'id = "{n.node_id}"',
                      f'raft = "{n.address}:{RAFT_PORT}"', f'http = "{n.address}:{HTTP_PORT}"']
        return "\n".join(lines) + "\n"

    def node(self, index: int) -> NodeProc:
        assert 1 <= index <= len(self.nodes), index
        return self.nodes[index - 1]

    def by_id(self, node_id: str) -> NodeProc:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def start(self, index: int) -> None:
        n = self.node(index)
        assert not n.running(), f"{n.node_id} is already running"
        n.data_dir.mkdir(parents=True, exist_ok=True)
        if n.log_fh is None:
            n.log_fh = n.log_path.open("ab")
        code_env = self._frozen_code_env()
        n.log_fh.write(f"\n==== chaos: start #{n.starts + 1} at {time.time():.3f} "
                       f"code={self.code_fingerprint[:16] or 'live'}\n".encode())
        n.log_fh.flush()
        argv = [*self.net.exec_prefix(index), *self.node_cmd, "--config", str(self.config_path),
                "--id", n.node_id, "--data-dir", str(n.data_dir)]
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1", **code_env,
               **self._clock_env(n)}
        n.proc = subprocess.Popen(argv, stdout=n.log_fh, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        n.starts += 1
        n.paused = False
        n.killed = False

    def _frozen_code_env(self) -> dict[str, str]:
        """PYTHONPATH to the run's code copy (made at the first start); {} when not frozen."""
        if not self.freeze:
            return {}
        code = self.workdir / "code"
        if not self.code_fingerprint:
            shutil.rmtree(code, ignore_errors=True)
            self.code_fingerprint = freeze_code(code)
            (self.workdir / "code-fingerprint").write_text(self.code_fingerprint + "\n")
        inherited = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": f"{code}{os.pathsep}{inherited}" if inherited else str(code)}

    def clock_file(self, index: int) -> Path:
        return self.workdir / f"clock-offset-n{index}"

    def _clock_env(self, n: NodeProc) -> dict[str, str]:
        lib = faketime_lib()
        if not self.clock_control or lib is None:
            return {}
        path = self.clock_file(n.index)
        if not path.exists():
            path.write_text("+0\n")
        # Not FAKETIME_DONT_FAKE_MONOTONIC: with it, libfaketime 0.9.10 makes Python's
        # time.sleep fail with EINVAL. So wall and monotonic clocks move together.
        return {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(path),
                "FAKETIME_CACHE_DURATION": str(FAKETIME_CACHE_S)}

    def jump_clock(self, index: int, delta_s: int) -> int:
        """Jump node `index`'s clocks (wall and monotonic) FORWARD by `delta_s`; returns the
        node's total offset. Never backwards: real monotonic clocks do not go back."""
        assert self.clock_control, "start the cluster with clock_control=True"
        assert delta_s > 0, delta_s
        path = self.clock_file(index)
        total = int(path.read_text().strip() or "0") + delta_s
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{total:+d}\n")
        tmp.replace(path)
        return total

    def clock_offset(self, index: int) -> int:
        """Node `index`'s current clock offset in seconds (0 before any clock fault)."""
        path = self.clock_file(index)
        return int(path.read_text().strip() or "0") if path.exists() else 0

    def set_clock(self, index: int, total_s: int) -> None:
        """Set node `index`'s clock offset to `total_s` (may be negative: BACK in time). Only
        while the node is down: a running process's monotonic clock must not go back, so a
        backward step is a restart with an earlier clock (like a host whose RTC was wrong)."""
        assert self.clock_control, "start the cluster with clock_control=True"
        assert not self.node(index).running(), "set_clock needs the node down"
        path = self.clock_file(index)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{total_s:+d}\n")
        tmp.replace(path)

    def start_all(self) -> None:
        for n in self.nodes:
            if not n.running():
                self.start(n.index)

    def signal(self, index: int, sig: signal.Signals) -> None:
        n = self.node(index)
        if n.proc is None or n.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(n.proc.pid, sig)

    def kill(self, index: int) -> None:
        """kill -9 (the whole process group), then reap it."""
        n = self.node(index)
        n.killed = True
        self.signal(index, signal.SIGKILL)
        if n.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.proc.wait(timeout=STOP_WAIT_S)
        n.paused = False

    def pause(self, index: int) -> None:
        self.signal(index, signal.SIGSTOP)
        self.node(index).paused = True

    def resume(self, index: int) -> None:
        self.signal(index, signal.SIGCONT)
        self.node(index).paused = False

    def exited(self, index: int) -> int | None:
        """The exit code if node `index` was started and has exited on its own."""
        n = self.node(index)
        return None if n.proc is None else n.proc.poll()

    def stop_all(self) -> None:
        """Kill every node (used in `finally`): SIGCONT first so a paused node can die."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                self.resume(n.index)
                self.kill(n.index)
            if n.log_fh is not None:
                n.log_fh.close()
                n.log_fh = None
