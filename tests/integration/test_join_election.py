"""A joining node does not disturb the cluster (issue 8 item 4, docs/membership.md).

pysyncobj connects a pair of nodes from the side whose address sorts higher. A new node whose Raft
address sorts LOWER than every member's is connected to as soon as the members append its
configuration entry; it has waited without a leader for longer than an election timeout, so
without the fix it starts an election at once and the term moves on. The replica restarts a
node's election timer when it goes from no connections to one (replication/replica.py), so the
leader's first append reaches it first: the term stays where it was.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

from replication.hardening import RAFT_MAX_TIMEOUT_S
from tests.integration.test_membership import QUEUE, Publisher, assert_nothing_lost, cli
from tests.support.cluster import REPO, TEST_SECRET, Cluster, Node, free_ports, http, wait_until

LOW_PORT_RANGE = range(10_000, 20_000)  # below the OS's ephemeral range: sorts lower as text


def free_low_port(members: list[Node]) -> int:
    """A free port whose "127.0.0.1:PORT" sorts below every member's Raft address."""
    lowest = min(f"127.0.0.1:{n.raft_port}" for n in members)
    for port in LOW_PORT_RANGE:
        if f"127.0.0.1:{port}" >= lowest:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port below the members' ports")


def start_low_node(cluster: Cluster, node_id: str) -> Node:
    members = [n for n in cluster.nodes if n.alive]
    (http_port,) = free_ports(1)
    node = Node(node_id, http_port, free_low_port(members), cluster.root / node_id,
                cluster.root / f"{node_id}.log")
    lines = ['cluster = "test"', f'raft_secret = "{TEST_SECRET}"']
    for n in [*members, node]:
        lines += ["[[nodes]]", f'id = "{n.id}"', f'raft = "127.0.0.1:{n.raft_port}"',
                  f'http = "127.0.0.1:{n.http_port}"']
    config = cluster.root / f"{node_id}.toml"
    config.write_text("\n".join(lines) + "\n")
    log = open(node.log_path, "ab")  # noqa: SIM115 - the child owns it
    node.proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "--config", str(config), "--id", node_id,
         "--data-dir", str(node.data_dir)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
        start_new_session=True)
    log.close()
    cluster.nodes.append(node)  # the fixture kills it by PID
    wait_until(lambda: http("GET", f"{node.url}/healthz", timeout_s=2).status == 200, 30,
               what=f"{node_id} serving")
    return node


def term_of(node: Node) -> int:
    r = http("GET", f"{node.url}/v1/cluster", timeout_s=5)
    assert r.status == 200, r.body
    return int(r.body["term"])


def test_adding_a_node_whose_address_sorts_lower_keeps_the_term(cluster: Cluster) -> None:
    originals = list(cluster.nodes)
    assert http("PUT", f"{originals[0].url}/v1/queues/{QUEUE}").status == 201
    pub = Publisher(originals)
    pub.start()
    try:
        pub.wait_more(20, what="before the add")
        n4 = start_low_node(cluster, "n4")
        assert f"127.0.0.1:{n4.raft_port}" < min(f"127.0.0.1:{n.raft_port}" for n in originals)
        # The scenario (not synchronisation): n4 waits alone past its longest election timeout.
        time.sleep(RAFT_MAX_TIMEOUT_S)
        term_before = term_of(originals[0])
        done = cli("add-node", "--url", originals[0].url, "--id", "n4",
                   "--raft", f"127.0.0.1:{n4.raft_port}", "--http", f"127.0.0.1:{n4.http_port}")
        assert done.returncode == 0, done.stderr + cluster.log_tail(originals[0])
        wait_until(lambda: http("GET", f"{n4.url}/readyz", timeout_s=2).status == 200, 30,
                   what="n4 ready")
        pub.wait_more(20, what="after the add")
        terms = {n.id: term_of(n) for n in cluster.nodes}
        assert set(terms.values()) == {term_before}, (
            f"the add caused an election: term {term_before} -> {terms}\n"
            f"{cluster.log_tail(n4)}")
        log = n4.log_path.read_text()
        assert "event=election_started" not in log, log[-2000:]
        assert "event=election_timer_restarted" in log  # the guard acted (it was needed)
        assert elections_started(n4) == 0
    finally:
        pub.stop()
    assert_nothing_lost(pub, n4.url)


def elections_started(node: Node) -> float:
    text = urllib.request.urlopen(f"{node.url}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("raftmq_raft_elections_started_total "):
            return float(line.split()[1])
    raise AssertionError("raftmq_raft_elections_started_total missing from /metrics")

