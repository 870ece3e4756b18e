"""`raftmq cluster up` (what `make run` starts): prints the nodes, keeps data across restarts,
stops every node on SIGTERM; `--tls` serves HTTPS with a self-signed certificate."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.cluster import REPO


def free_base_port() -> int:
    """A base port whose HTTP (base+1..3) and Raft (base+101..103) ports are all free."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] % 20000 + 20000
        ports = [base + i for i in (1, 2, 3, 101, 102, 103)]
        if all(_free(p) for p in ports):
            return base
    raise AssertionError("no free base port")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


class Up:
    def __init__(self, data_dir: Path, base: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "cluster", "up", "--data-dir", str(data_dir),
             "--base-port", str(base), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []

    def read_until(self, marker: str, timeout_s: float = 90) -> list[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if marker in line:
                return self.lines
        raise AssertionError(f"{marker!r} not printed; got: {self.lines}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def call(url: str, method: str = "GET", body: Any = None,
         context: ssl.SSLContext | None = None) -> Any:
    req = urllib.request.Request(url, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=30, context=context) as resp:
        return json.loads(resp.read() or b"null")


def test_cluster_up_prints_nodes_keeps_data_and_stops_cleanly(tmp_path: Path) -> None:
    base = free_base_port()
    up = Up(tmp_path, base)
    try:
        lines = up.read_until("Ctrl-C")
        assert any(f"http://127.0.0.1:{base + 1}" in line for line in lines)
        assert any("cluster ready" in line for line in lines), lines
        assert any(line.strip().startswith("curl") for line in lines)
        node1, node3 = f"http://127.0.0.1:{base + 1}", f"http://127.0.0.1:{base + 3}"
        call(f"{node1}/v1/queues/kept", "PUT", {})
        call(f"{node3}/v1/queues/kept/messages", "POST", {"messages": [{"body": "still here"}]})
    finally:
        assert up.stop() == 0
    for port in (base + 1, base + 2, base + 3, base + 101):
        assert not _listening(port), f"something still listens on {port} after SIGTERM"
    again = Up(tmp_path, base)
    try:
        again.read_until("Ctrl-C")
        got = call(f"http://127.0.0.1:{base + 2}/v1/queues/kept/receive", "POST", {})
        assert [m["body"] for m in got["messages"]] == ["still here"]
    finally:
        again.stop()


def test_cluster_up_tls(tmp_path: Path) -> None:
    base = free_base_port()
    up = Up(tmp_path, base, "--tls", "--nodes", "3")
    try:
        lines = up.read_until("Ctrl-C")
        assert any(f"https://127.0.0.1:{base + 1}" in line for line in lines), lines
        context = ssl.create_default_context(cafile=str(tmp_path / "tls.crt"))
        status = call(f"https://127.0.0.1:{base + 1}/v1/cluster", context=context)
        assert status["leader"]
    finally:
        up.stop()
