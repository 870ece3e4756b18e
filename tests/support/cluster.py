"""A real cluster of `raftmq node` processes on 127.0.0.1 for integration tests.

Ports come from the OS, data lives in a tmp dir, every process is killed by PID at the end.
Nothing here sleeps to synchronise: `wait_until` polls with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TEST_SECRET = "integration-test-secret-0123456789"


# Test nodes listen below the kernel's ephemeral range (32768-60999 by default), each pytest
# worker in a band of its own. A port the OS hands out (bind to port 0) is an ephemeral port:
# while a test's node was down for a restart, an outgoing connection of another test took
# its port, the node could not bind it again, and that test's client reached another test's
# cluster (test_1000_publishes_across_a_whole_cluster_restart, session 5).
PORTS_FIRST, PORTS_BAND = 20_000, 1_500  # bands of 1,500 ports for up to 8 workers
_port_cursor = 0


def worker_index() -> int:
    """This pytest-xdist worker's number (gw3 -> 3), 0 when not under xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return int(worker) if worker.isdigit() else 0


def _band_start() -> int:
    return PORTS_FIRST + worker_index() % 8 * PORTS_BAND


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1, from this worker's band (held open together so
    they differ; the band is walked round, so a port comes back only after 1,500 others)."""
    global _port_cursor
    socks: list[socket.socket] = []
    try:
        for _ in range(PORTS_BAND):
            if len(socks) == count:
                break
            port = _band_start() + _port_cursor % PORTS_BAND
            _port_cursor += 1
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
        assert len(socks) == count, f"no {count} free ports in this worker's band"
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(fn: Callable[[], T | None], timeout_s: float = 30.0, interval_s: float = 0.05,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # polled condition may fail transiently
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last error: {last_exc}")


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


NO_LEADER_RETRY_S = 20.0


def http(method: str, url: str, body: Any = None, timeout_s: float = 30.0,
         headers: dict[str, str] | None = None) -> Response:
    """One request, retried (as any client following Retry-After would) while the node answers
    503 no_leader: an election under CPU starvation is not what these tests are about. Every
    other answer, 503 unavailable and 504 included, is returned as it is."""
    deadline = time.monotonic() + NO_LEADER_RETRY_S
    while True:
        r = _http_once(method, url, body, timeout_s, headers)
        no_leader = (r.status == 503 and isinstance(r.body, dict)
                     and r.body.get("error", {}).get("code") == "no_leader")
        if not no_leader or time.monotonic() >= deadline:
            return r
        time.sleep(0.2)


def _http_once(method: str, url: str, body: Any, timeout_s: float,
               headers: dict[str, str] | None) -> Response:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
            return Response(resp.status, _decode(raw), dict(resp.headers))
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return Response(exc.code, _decode(raw), dict(exc.headers))


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


@dataclass
class Node:
    id: str
    http_port: int
    raft_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """N node processes described by one cluster file, with kill/restart/pause controls."""

    def __init__(self, root: Path, size: int = 3, secret: str = TEST_SECRET,
                 extra_config: str = "", token: str | None = None) -> None:
        self.root = root
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        ports = free_ports(2 * size)
        self.nodes = [
            Node(f"n{i + 1}", ports[2 * i], ports[2 * i + 1], root / f"n{i + 1}",
                 root / f"n{i + 1}.log")
            for i in range(size)
        ]
        lines = ['cluster = "test"', f'raft_secret = "{secret}"', extra_config]
        for node in self.nodes:
            lines += ["[[nodes]]", f'id = "{node.id}"', f'raft = "127.0.0.1:{node.raft_port}"',
                      f'http = "127.0.0.1:{node.http_port}"']
        self.config_path = root / "cluster.toml"
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- processes -------------------------------------------------------------------------
    def start(self, node: Node | None = None, env: dict[str, str] | None = None) -> None:
        for n in [node] if node else self.nodes:
            assert not n.alive, f"{n.id} already running"
            log = open(n.log_path, "ab")  # noqa: SIM115 - the child owns it
            n.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "node", "--config", str(self.config_path),
                 "--id", n.id, "--data-dir", str(n.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                env={**os.environ, **(env or {})}, start_new_session=True)
            log.close()

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        assert node.proc is not None
        node.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            node.proc.wait(timeout=30)

    def pause(self, node: Node) -> None:
        self.kill(node, signal.SIGSTOP)

    def resume(self, node: Node) -> None:
        self.kill(node, signal.SIGCONT)

    def restart(self, node: Node) -> None:
        if node.alive:
            self.kill(node)
        self.start(node)

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                try:
                    n.proc.send_signal(signal.SIGCONT)
                    n.proc.kill()
                    n.proc.wait(timeout=30)
                except ProcessLookupError:
                    pass

    # -- observation -----------------------------------------------------------------------
    def status(self, node: Node) -> dict[str, Any] | None:
        try:
            r = http("GET", f"{node.url}/v1/cluster", timeout_s=2, headers=self.headers)
        except (urllib.error.URLError, OSError):
            return None
        return r.body if r.status == 200 else None

    def wait_ready(self, nodes: list[Node] | None = None, timeout_s: float = 60.0) -> None:
        for n in nodes or [x for x in self.nodes if x.alive]:
            try:
                wait_until(lambda n=n: _ready(n), timeout_s, what=f"{n.id} ready")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{n.id} log tail:\n{self.log_tail(n)}") from None
        wait_until(self._one_leader_known_everywhere, timeout_s, what="every node knows the leader")

    def _one_leader_known_everywhere(self) -> bool:
        leaders = set()
        for n in self.nodes:
            if n.alive:
                st = self.status(n)
                if not st or not st.get("leader"):
                    return False
                leaders.add(st["leader"])
        return len(leaders) == 1

    def leader(self, timeout_s: float = 30.0) -> Node:
        def find() -> Node | None:
            for n in self.nodes:
                if n.alive:
                    st = self.status(n)
                    if st and st.get("role") == "leader":
                        return n
            return None

        return wait_until(find, timeout_s, what="a leader")

    def followers(self) -> list[Node]:
        lead = self.leader()
        return [n for n in self.nodes if n is not lead and n.alive]

    def log_tail(self, node: Node, chars: int = 1500) -> str:
        try:
            return node.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def running_cluster(root: Path, size: int = 3, **kwargs: Any) -> Iterator[Cluster]:
    """A started, ready cluster that is always stopped (every process killed) afterwards."""
    c = Cluster(root, size=size, **kwargs)
    try:
        c.start()
        c.wait_ready()
        yield c
    finally:
        c.stop()


def _ready(node: Node) -> bool:
    try:
        return http("GET", f"{node.url}/readyz", timeout_s=2).status == 200
    except (urllib.error.URLError, OSError):
        return False
