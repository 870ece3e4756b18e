"""A 3-node cluster where every node has its own network namespace and address (issue 8 item 5),
as three hosts would: nodes bind 10.77.0.N, talk over a bridge, the client is a fourth "host".
A partition of the leader (iptables in the namespaces, chaos/netns.py) elects another leader,
writes go on, and after the heal the old leader has them. Skipped (with the reason) where
network namespaces cannot be made (not root, no `ip`/`iptables`)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.netns import Network, in_netns, node_address, unavailable_reason
from tests.support.cluster import REPO, TEST_SECRET, http, wait_until

NODES = 3
RAFT_PORT = 8801
HTTP_PORT = 8701
Procs = dict[int, subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def netns_reason() -> str | None:
    return unavailable_reason()


def url(index: int) -> str:
    return f"http://{node_address(index)}:{HTTP_PORT}"


@contextlib.contextmanager
def cluster_in_namespaces(root: Path) -> Iterator[tuple[Network, Procs]]:
    lines = ['cluster = "hosts"', f'raft_secret = "{TEST_SECRET}"']
    for i in range(1, NODES + 1):
        lines += ["[[nodes]]", f'id = "n{i}"', f'raft = "{node_address(i)}:{RAFT_PORT}"',
                  f'http = "{node_address(i)}:{HTTP_PORT}"']
    config = root / "cluster.toml"
    config.write_text("\n".join(lines) + "\n")
    procs: Procs = {}
    with Network(NODES) as net:
        try:
            for i in range(1, NODES + 1):
                with open(root / f"n{i}.log", "ab") as log:
                    procs[i] = subprocess.Popen(  # `ip netns exec` execs: same PID
                        [*net.exec_prefix(i), sys.executable, "-m", "node.cli", "node",
                         "--config", str(config), "--id", f"n{i}",
                         "--data-dir", str(root / f"n{i}")],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        cwd=REPO, start_new_session=True)
            yield net, procs
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)


def status(index: int) -> dict[str, Any]:
    r = http("GET", f"{url(index)}/v1/cluster", timeout_s=3)
    assert r.status == 200, r.body
    body: dict[str, Any] = r.body
    return body


def ready(indexes: list[int]) -> bool:
    if not all(http("GET", f"{url(i)}/readyz", timeout_s=3).status == 200 for i in indexes):
        return False
    leaders = {status(i)["leader"] for i in indexes}
    return len(leaders) == 1 and None not in leaders


def leader_index(indexes: list[int]) -> int:
    leader = status(indexes[0])["leader"]
    assert leader is not None
    return int(leader[1:])


def isolate(net: Network, index: int) -> None:
    for other in range(1, NODES + 1):
        if other != index:
            net.drop_from(index, node_address(other))
            net.drop_from(other, node_address(index))


def test_three_hosts_in_namespaces_elect_replicate_and_survive_a_partition(
        netns_reason: str | None, tmp_path: Path) -> None:
    if netns_reason:
        pytest.skip(f"network namespaces unavailable: {netns_reason}")
    everyone = list(range(1, NODES + 1))
    with cluster_in_namespaces(tmp_path) as (net, procs), in_netns(net.client_ns):
        wait_until(lambda: ready(everyone), 60, what="3 nodes ready, one leader")
        members = {m["id"]: m for m in status(3)["members"]}
        assert {m["raft"] for m in members.values()} == {
            f"{node_address(i)}:{RAFT_PORT}" for i in everyone}
        assert all(m["reachable"] for m in members.values()), members
        assert http("PUT", f"{url(1)}/v1/queues/hosts").status == 201
        r = http("POST", f"{url(2)}/v1/queues/hosts/messages",
                 {"messages": [{"body": f"m{i}"} for i in range(5)]})
        assert r.status == 201, r.body
        got = http("POST", f"{url(3)}/v1/queues/hosts/receive",
                   {"max_messages": 10, "ack": "auto"}).body["messages"]
        assert sorted(m["body"] for m in got) == [f"m{i}" for i in range(5)]

        old = leader_index(everyone)
        isolate(net, old)
        rest = [i for i in everyone if i != old]
        wait_until(lambda: ready(rest) and leader_index(rest) != old, 30,
                   what=f"a new leader without n{old}")
        r = http("POST", f"{url(rest[0])}/v1/queues/hosts/messages",
                 {"messages": [{"body": "during"}]})
        assert r.status == 201, r.body
        net.heal()
        wait_until(lambda: ready(everyone), 60, what="the old leader back, one leader")
        r = http("GET", f"{url(old)}/v1/queues/hosts?consistency=linearizable")
        assert r.status == 200 and r.body["stats"]["ready"] == 1, r.body
        assert all(p.poll() is None for p in procs.values())
