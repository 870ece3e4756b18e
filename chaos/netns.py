"""Network namespaces for a chaos run: one per node, one for the client, one for the bridge.

Topology (every name starts with the run prefix, e.g. ``rq1234a7``; nothing touches the root
namespace and no route leaves the namespaces):

    <prefix>b   the bridge namespace: bridge ``br0`` and the host ends ``v1..vN``, ``vc``
    <prefix>n1  node 1: ``eth0`` = 10.77.0.1/24  ...  <prefix>nN: 10.77.0.N/24
    <prefix>c   the client (workload) namespace: ``eth0`` = 10.77.0.100/24

Because every node has its own namespace and address, a partition is a set of iptables DROP
rules in the INPUT chain of the receiving node's namespace, keyed on the sender's address.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

SUBNET_PREFIX = "10.77.0"
CLIENT_HOST_ID = 100
NODES_MAX = 9
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
PREFIX_RE = re.compile(r"^rq(\d+)x[0-9a-f]{4}")
COMMAND_TIMEOUT_S = 30.0
TBF_BURST_KBIT = 32  # tc tbf bucket: bytes that pass at line rate before the limit bites


class NetnsUnavailable(RuntimeError):
    """Raised when this machine cannot run the harness (not root, no `ip netns`, no iptables)."""


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "the chaos harness needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian packages: iproute2, iptables)"
    probe = f"rq{os.getpid()}x{secrets.token_hex(2)}probe"
    try:
        run_cmd(["ip", "netns", "add", probe])
        run_cmd(["ip", "netns", "exec", probe, "iptables", "-w", "-L", "INPUT", "-n"])
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns` / iptables do not work here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def run_cmd(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command with a timeout; raise CalledProcessError with its stderr on failure."""
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc


def node_address(index: int) -> str:
    """The address of node `index` (1-based)."""
    assert 1 <= index <= NODES_MAX, index
    return f"{SUBNET_PREFIX}.{index}"


CLIENT_ADDRESS = f"{SUBNET_PREFIX}.{CLIENT_HOST_ID}"


def enter_netns(name: str) -> None:
    """Move the calling THREAD into namespace `name` (sockets it opens afterwards live there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def cleanup_orphans() -> list[str]:
    """Delete namespaces left behind by harness processes that no longer exist."""
    removed: list[str] = []
    listing = run_cmd(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = PREFIX_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            run_cmd(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Network:
    """The namespaces of one run. Use as a context manager; `close` is idempotent."""

    nodes: int
    prefix: str = field(default_factory=lambda: f"rq{os.getpid()}x{secrets.token_hex(2)}")
    created: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}b"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}c"

    def node_ns(self, index: int) -> str:
        assert 1 <= index <= self.nodes, index
        return f"{self.prefix}n{index}"

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        assert 1 <= self.nodes <= NODES_MAX, self.nodes
        atexit.register(self.close)
        self._add_ns(self.bridge_ns)
        self._ip(self.bridge_ns, "link", "add", "br0", "type", "bridge")
        self._ip(self.bridge_ns, "link", "set", "br0", "up")
        for i in range(1, self.nodes + 1):
            self._attach(self.node_ns(i), f"v{i}", node_address(i))
        self._attach(self.client_ns, "vc", CLIENT_ADDRESS)

    def _add_ns(self, name: str) -> None:
        run_cmd(["ip", "netns", "add", name])
        self.created.append(name)
        self._ip(name, "link", "set", "lo", "up")

    def _attach(self, ns: str, host_end: str, address: str) -> None:
        self._add_ns(ns)
        self._ip(self.bridge_ns, "link", "add", host_end, "type", "veth",
                 "peer", "name", "eth0", "netns", ns)
        self._ip(self.bridge_ns, "link", "set", host_end, "master", "br0")
        self._ip(self.bridge_ns, "link", "set", host_end, "up")
        self._ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        self._ip(ns, "link", "set", "eth0", "up")

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        run_cmd(["ip", "-n", ns, *args])

    def exec_prefix(self, index: int) -> list[str]:
        """argv prefix that runs a command inside node `index`'s namespace (same PID)."""
        return ["ip", "netns", "exec", self.node_ns(index)]

    def iptables(self, index: int, *args: str, check: bool = True) -> None:
        run_cmd([*self.exec_prefix(index), "iptables", "-w", *args], check=check)

    def drop_from(self, index: int, source: str, *, reject: bool = False) -> None:
        """Node `index` stops hearing from `source` (an address)."""
        target = ["REJECT", "--reject-with", "tcp-reset"] if reject else ["DROP"]
        if reject:
            self.iptables(index, "-A", "INPUT", "-p", "tcp", "-s", source, "-j", *target)
        else:
            self.iptables(index, "-A", "INPUT", "-s", source, "-j", *target)

    def lossy_from(self, index: int, source: str, probability: float) -> None:
        """Node `index` drops each packet from `source` with `probability` (iptables statistic:
        this kernel has no sch_netem, so loss is made in the INPUT chain)."""
        assert 0.0 < probability <= 1.0, probability
        self.iptables(index, "-A", "INPUT", "-s", source, "-m", "statistic", "--mode", "random",
                      "--probability", f"{probability:.4f}", "-j", "DROP")

    def rate_limit(self, index: int, rate_kbit: int, latency_ms: int) -> None:
        """Node `index` sends at most `rate_kbit` (tc tbf on its eth0): packets queue up to
        `latency_ms` (that is the delay) and are dropped past it."""
        assert rate_kbit > 0 and latency_ms > 0, (rate_kbit, latency_ms)
        run_cmd([*self.exec_prefix(index), "tc", "qdisc", "replace", "dev", "eth0", "root",
                 "tbf", "rate", f"{rate_kbit}kbit", "burst", f"{TBF_BURST_KBIT}kbit",
                 "latency", f"{latency_ms}ms"])

    def heal(self) -> None:
        """Remove every partition / loss rule and every rate limit from every node."""
        for i in range(1, self.nodes + 1):
            self.iptables(i, "-F", "INPUT")
            if shutil.which("tc") is not None:
                run_cmd([*self.exec_prefix(i), "tc", "qdisc", "del", "dev", "eth0", "root"],
                        check=False)  # fails harmlessly when there is no limit

    def rules(self, index: int) -> str:
        return run_cmd([*self.exec_prefix(index), "iptables", "-w", "-S", "INPUT"]).stdout

    def qdisc(self, index: int) -> str:
        return run_cmd([*self.exec_prefix(index), "tc", "qdisc", "show", "dev", "eth0"]).stdout

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for name in reversed(self.created):
            run_cmd(["ip", "netns", "del", name], check=False)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def existing(self) -> list[str]:
        """The namespaces of this run that still exist (for tests of cleanup)."""
        listing = run_cmd(["ip", "netns", "list"], check=False).stdout
        names = [line.split()[0] for line in listing.splitlines() if line.split()]
        return [n for n in names if n.startswith(self.prefix)]


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Move the current thread into namespace `name` for the body, then back."""
    libc = ctypes.CDLL(None, use_errno=True)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter_netns(name)
        yield
    finally:
        if libc.setns(back, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back failed")
        os.close(back)
