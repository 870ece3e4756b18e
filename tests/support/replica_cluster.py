"""A cluster of tests/support/replica_node.py processes on 127.0.0.1 for replica tests and the
replica bench: ports from the OS, data in a given dir, every process killed by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from tests.support.cluster import free_ports
from tests.support.cluster import wait_until as shared_wait_until

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def wait_until(fn: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """tests.support.cluster.wait_until with `what` as the third positional argument."""
    return shared_wait_until(fn, timeout_s, what=what)


class Node:
    def __init__(self, node_id: str, raft_addr: str, peers: dict[str, str], data_dir: Path,
                 extra: list[str]) -> None:
        self.id = node_id
        self.raft_addr = raft_addr
        self.peers = peers
        self.data_dir = data_dir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        peers = ",".join(f"{k}={v}" for k, v in self.peers.items())
        log = open(self.data_dir.parent / f"{self.id}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.replica_node", "--id", self.id,
             "--raft", self.raft_addr, "--peers", peers, "--data-dir", str(self.data_dir),
             *self.extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log)
        log.close()

    def wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert line.startswith("READY "), f"node {self.id} did not start: {line!r}"
        self.port = int(line.split()[1])

    def call(self, method: str, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
        data = None if body is None else msgpack.packb(body, use_bin_type=True)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return msgpack.unpackb(resp.read(), raw=False, strict_map_key=False)

    def propose(self, cmd: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        out: dict[str, Any] = self.call("POST", "/propose", {"cmd": cmd, "timeout_s": timeout_s},
                                        timeout_s=timeout_s + 10)
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.call("GET", "/status", timeout_s=5)
        return out

    def applied_log(self) -> list[list[Any]]:
        out: list[list[Any]] = self.call("GET", "/log", timeout_s=5)
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


class Cluster:
    def __init__(self, root: Path, size: int = 3, extra: list[str] | None = None) -> None:
        ids = [f"n{i + 1}" for i in range(size)]
        addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_ports(size), strict=True)}
        self.nodes: dict[str, Node] = {}
        for nid in ids:
            data = root / nid
            data.mkdir(parents=True)
            peers = {k: v for k, v in addrs.items() if k != nid}
            self.nodes[nid] = Node(nid, addrs[nid], peers, data, extra or [])

    def start(self) -> None:
        for node in self.nodes.values():
            node.spawn()
        for node in self.nodes.values():
            node.wait_ready()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.proc is not None]

    def leader(self, among: list[Node] | None = None, timeout_s: float = START_TIMEOUT_S) -> Node:
        """The node that says it leads, once every live node agrees on it."""
        nodes = among or self.live()

        def agreed() -> Node | None:
            statuses = [n.status() for n in nodes]
            leaders = {s["leader_id"] for s in statuses}
            if len(leaders) != 1 or None in leaders:
                return None
            (leader_id,) = leaders
            leader = self.nodes[leader_id]
            return leader if leader in nodes and leader.status()["role"] == "leader" else None

        return wait_until(agreed, timeout_s, "an agreed leader")

    def wait_stable(self, timeout_s: float = START_TIMEOUT_S) -> Node:
        """An agreed leader, and every live node has committed a proposal of its own."""
        for node in self.live():
            wait_until(lambda n=node: "result" in n.propose({"op": "noop"}, 3.0), timeout_s,
                       f"a commit from {node.id}")
        return self.leader(timeout_s=timeout_s)

    def followers(self, leader: Node) -> list[Node]:
        return [n for n in self.live() if n is not leader]


def wait_logs_equal(nodes: list[Node], keys: list[Any], timeout_s: float = 20.0) -> list[Any]:
    """Once every node applied the same commands, including all `keys`: those keys, in the
    order they were applied."""
    wanted = set(keys)

    def same() -> list[Any] | None:
        logs = [n.applied_log() for n in nodes]
        if all(log == logs[0] for log in logs):
            mine = [k for _, k in logs[0] if k in wanted]
            if set(mine) == wanted:
                return mine
        return None

    return wait_until(same, timeout_s, f"{len(nodes)} nodes to apply the same commands")
