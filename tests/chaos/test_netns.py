"""The network layer with a stand-in server: reachability, partitions, heal, cleanup."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chaos.netns import CLIENT_ADDRESS, Network, in_netns, node_address

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("netns_available")]
PORT = 8701
DEADLINE_S = 10.0


def reachable(address: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{PORT}/", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_reachable(address: str) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if reachable(address):
            return True
        time.sleep(0.1)
    return False


def test_partition_blocks_and_heal_restores(tmp_path: Path) -> None:
    with Network(2) as net:
        server = subprocess.Popen(
            [*net.exec_prefix(1), sys.executable, "-m", "http.server", "--bind",
             node_address(1), str(PORT)], cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with in_netns(net.client_ns):
                assert wait_reachable(node_address(1))
                net.drop_from(1, CLIENT_ADDRESS)
                assert "-s 10.77.0.100/32 -j DROP" in net.rules(1)
                assert not reachable(node_address(1))
                net.heal()
                assert net.rules(1).strip() == "-P INPUT ACCEPT"
                assert wait_reachable(node_address(1))
            with in_netns(net.node_ns(2)):  # node to node over the bridge
                assert wait_reachable(node_address(1))
        finally:
            server.kill()
            server.wait()
        names = net.existing()
        assert len(names) == 4  # bridge, two nodes, client
    assert net.existing() == []


def test_namespaces_are_removed_on_error() -> None:
    net = Network(3)
    with pytest.raises(RuntimeError), net:
        assert len(net.existing()) == 5
        raise RuntimeError("boom")
    assert net.existing() == []


UDP_PORT = 9901
DATAGRAMS = 400


def udp_delivered(net: Network, sender_ns: str, receiver: int, size: int = 64) -> int:
    """Send DATAGRAMS from `sender_ns` to node `receiver`; how many arrived."""
    import socket

    with in_netns(net.node_ns(receiver)):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind((node_address(receiver), UDP_PORT))
    rx.settimeout(1.0)
    with in_netns(sender_ns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(DATAGRAMS):
            tx.sendto(b"x" * size, (node_address(receiver), UDP_PORT))
        got = 0
        try:
            while got < DATAGRAMS:
                rx.recv(65536)
                got += 1
        except TimeoutError:
            pass
        return got
    finally:
        tx.close()
        rx.close()


def test_lossy_link_drops_about_the_given_fraction_and_heals() -> None:
    with Network(2) as net:
        assert udp_delivered(net, net.node_ns(2), 1) == DATAGRAMS
        net.lossy_from(1, node_address(2), 0.5)
        assert "--probability 0.5" in net.rules(1)
        got = udp_delivered(net, net.node_ns(2), 1)
        assert DATAGRAMS * 0.3 < got < DATAGRAMS * 0.7, got
        assert udp_delivered(net, net.client_ns, 1) == DATAGRAMS  # only that link is lossy
        net.heal()
        assert udp_delivered(net, net.node_ns(2), 1) == DATAGRAMS


def test_rate_limit_queues_then_drops_a_burst_and_heals() -> None:
    """tc tbf on node 1's egress: a 400 x 1 KB burst cannot pass 64 kbit within 100 ms."""
    with Network(2) as net:
        net.rate_limit(1, 64, 100)
        assert "tbf" in net.qdisc(1)
        assert udp_delivered(net, net.node_ns(1), 2, size=1000) < DATAGRAMS // 4
        net.heal()
        assert "tbf" not in net.qdisc(1)
        assert udp_delivered(net, net.node_ns(1), 2, size=1000) == DATAGRAMS
