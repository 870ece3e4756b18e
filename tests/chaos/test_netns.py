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
