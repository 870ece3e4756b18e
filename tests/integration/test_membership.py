"""Dynamic membership on real processes (issue 8): add a node under load and see it catch up and
count in the majority; remove a follower and the leader under load; nothing acked is lost."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import urllib.error
from pathlib import Path
from typing import Any

from tests.support.cluster import REPO, TEST_SECRET, Cluster, Node, free_ports, http, wait_until

QUEUE = "members"


class Publisher(threading.Thread):
    """One message per request, to the given nodes in turn; records what was acked (201)."""

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.acked: list[str] = []
        self.attempted = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            node = self.nodes[self.attempted % len(self.nodes)]
            body = f"m{self.attempted}"
            self.attempted += 1
            if not node.alive:
                continue
            try:
                r = http("POST", f"{node.url}/v1/queues/{QUEUE}/messages",
                         {"messages": [{"body": body}]}, timeout_s=15)
            except (urllib.error.URLError, OSError, TimeoutError):
                continue
            if r.status == 201:
                self.acked.append(body)

    def wait_more(self, count: int, timeout_s: float = 60.0, what: str = "") -> None:
        target = len(self.acked) + count
        wait_until(lambda: len(self.acked) >= target, timeout_s,
                   what=f"{count} more acked publishes {what}")

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def drain(url: str) -> list[str]:
    got: list[str] = []
    while True:
        r = http("POST", f"{url}/v1/queues/{QUEUE}/receive",
                 {"max_messages": 500, "ack": "auto"}, timeout_s=30)
        assert r.status == 200, r.body
        if not r.body["messages"]:
            return got
        got += [m["body"] for m in r.body["messages"]]


def assert_nothing_lost(pub: Publisher, url: str) -> None:
    got = drain(url)
    missing = set(pub.acked) - set(got)
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:10]}"
    assert len(pub.acked) > 0


def start_new_node(cluster: Cluster, node_id: str) -> Node:
    """A node started by the operator BEFORE it is added: its cluster file lists the current
    members plus itself (docs/membership.md step 1). It is appended to cluster.nodes so the
    fixture kills it by PID."""
    http_port, raft_port = free_ports(2)
    node = Node(node_id, http_port, raft_port, cluster.root / node_id,
                cluster.root / f"{node_id}.log")
    lines = ['cluster = "test"', f'raft_secret = "{TEST_SECRET}"']
    for n in [*[x for x in cluster.nodes if x.alive], node]:
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
    cluster.nodes.append(node)
    wait_until(lambda: http("GET", f"{node.url}/healthz", timeout_s=2).status == 200, 30,
               what=f"{node_id} serving (its Raft port is bound before HTTP starts)")
    return node


def members(node: Node) -> dict[str, dict[str, Any]]:
    r = http("GET", f"{node.url}/v1/cluster", timeout_s=5)
    assert r.status == 200, r.body
    return {m["id"]: m for m in r.body["members"]}


def listed(node: Node, node_id: str) -> bool:
    return node_id in members(node)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", "cluster", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=90)


def published_total(node: Node) -> int:
    r = http("GET", f"{node.url}/v1/queues/{QUEUE}?consistency=linearizable", timeout_s=10)
    return int(r.body["stats"]["published_total"]) if r.status == 200 else -1


def test_add_node_under_load_catches_up_and_counts_in_the_majority(cluster: Cluster) -> None:
    originals = list(cluster.nodes)
    assert http("PUT", f"{originals[0].url}/v1/queues/{QUEUE}").status == 201
    pub = Publisher(originals)
    pub.start()
    try:
        pub.wait_more(50, what="before the add")
        n4 = start_new_node(cluster, "n4")
        follower = cluster.followers()[0]
        done = cli("add-node", "--url", follower.url, "--id", "n4",
                   "--raft", f"127.0.0.1:{n4.raft_port}", "--http", f"127.0.0.1:{n4.http_port}")
        assert done.returncode == 0, done.stderr + cluster.log_tail(follower)
        assert "added n4" in done.stdout
        for node in cluster.nodes:  # every node lists the new member with its addresses
            wait_until(functools.partial(listed, node, "n4"), 15, what=f"n4 listed by {node.id}")
            assert members(node)["n4"]["http"] == f"127.0.0.1:{n4.http_port}"
            assert len(members(node)) == 4
        acked_before = len(pub.acked)
        wait_until(lambda: published_total(n4) >= acked_before, 30,
                   what="n4's linearizable read showing every message acked before it")
        pub.wait_more(30, what="after the add")
        # 4 members need 3: with one original killed (the leader, unless n4 leads by now), only
        # n4's vote and acks make a majority, so writes resuming proves it counts.
        leader = cluster.leader()
        cluster.kill(leader if leader is not n4 else originals[0])
        pub.nodes = [n for n in cluster.nodes if n.alive]
        pub.wait_more(30, timeout_s=60, what="with an original killed (n4 needed for quorum)")
    finally:
        pub.stop()
    assert_nothing_lost(pub, n4.url)


def test_add_node_refuses_duplicates_and_bad_input(cluster: Cluster) -> None:
    url = cluster.nodes[0].url
    n2 = cluster.nodes[1]
    dup = http("POST", f"{url}/v1/cluster/members",
               {"id": "n2", "raft": "127.0.0.1:1", "http": "127.0.0.1:2"})
    assert dup.status == 409 and dup.body["error"]["code"] == "already_exists", dup.body
    same_addr = http("POST", f"{url}/v1/cluster/members",
                     {"id": "n9", "raft": f"127.0.0.1:{n2.raft_port}", "http": "127.0.0.1:2"})
    assert same_addr.status == 409, same_addr.body
    for body, field in (({"id": "bad id", "raft": "127.0.0.1:1", "http": "127.0.0.1:2"}, "id"),
                        ({"id": "n9", "raft": "nohost", "http": "127.0.0.1:2"}, "raft"),
                        ({"id": "n9", "raft": "127.0.0.1:1"}, "http")):
        r = http("POST", f"{url}/v1/cluster/members", body)
        assert r.status == 400 and r.body["error"]["message"].startswith(field), r.body
    missing = http("DELETE", f"{url}/v1/cluster/members/n9")
    assert missing.status == 404 and missing.body["error"]["code"] == "member_not_found"
    assert sorted(members(cluster.nodes[0])) == ["n1", "n2", "n3"]  # nothing changed
    bad = cli("add-node", "--url", url, "--id", "n2", "--raft", "127.0.0.1:1",
              "--http", "127.0.0.1:2")
    assert bad.returncode == 1 and "already_exists" in bad.stderr


def removed_node_refuses_writes(node: Node) -> bool:
    r = http("POST", f"{node.url}/v1/queues/{QUEUE}/messages", {"messages": [{"body": "x"}]},
             timeout_s=15)
    return r.status == 503


def test_remove_follower_under_load_loses_nothing(cluster: Cluster) -> None:
    assert http("PUT", f"{cluster.nodes[0].url}/v1/queues/{QUEUE}").status == 201
    leader = cluster.leader()
    victim = cluster.followers()[0]
    stay = [n for n in cluster.nodes if n is not victim]
    pub = Publisher(stay)
    pub.start()
    try:
        pub.wait_more(50, what="before the removal")
        r = http("DELETE", f"{leader.url}/v1/cluster/members/{victim.id}", timeout_s=60)
        assert r.status == 200, r.body
        assert sorted(m["id"] for m in r.body["members"]) == sorted(n.id for n in stay)
        for node in stay:
            assert victim.id not in members(node)
        pub.wait_more(50, what="after the removal")
        wait_until(lambda: removed_node_refuses_writes(victim), 20,
                   what="the removed node refusing writes (503)")
    finally:
        pub.stop()
    assert_nothing_lost(pub, leader.url)


def test_remove_leader_through_itself_transfers_leadership_first(cluster: Cluster) -> None:
    assert http("PUT", f"{cluster.nodes[0].url}/v1/queues/{QUEUE}").status == 201
    leader = cluster.leader()
    stay = [n for n in cluster.nodes if n is not leader]
    pub = Publisher(stay)
    pub.start()
    try:
        pub.wait_more(50, what="before the removal")
        done = cli("remove-node", "--url", leader.url, "--id", leader.id)
        assert done.returncode == 0, done.stderr + cluster.log_tail(leader)
        new_leader = cluster.leader()
        assert new_leader is not leader
        for node in stay:
            assert sorted(members(node)) == sorted(n.id for n in stay)
        pub.wait_more(50, what="after the leader was removed")
        wait_until(lambda: removed_node_refuses_writes(leader), 20,
                   what="the removed ex-leader refusing writes (503)")
    finally:
        pub.stop()
    assert_nothing_lost(pub, stay[0].url)


COMPACT_OFTEN = "[raft]\nlogCompactionMinEntries = 50\nlogCompactionMinTime = 1\n"


def test_added_node_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    """The leader compacted its log long before the add: the new node gets a snapshot."""
    cluster = Cluster(tmp_path, size=3, extra_config=COMPACT_OFTEN)
    try:
        cluster.start()
        cluster.wait_ready()
        url = cluster.nodes[0].url
        assert http("PUT", f"{url}/v1/queues/{QUEUE}").status == 201
        bodies = [f"s{i}" for i in range(400)]
        for i in range(0, len(bodies), 4):
            r = http("POST", f"{url}/v1/queues/{QUEUE}/messages",
                     {"messages": [{"body": b} for b in bodies[i:i + 4]]})
            assert r.status == 201, r.body
        leader = cluster.leader()
        wait_until(lambda: (leader.data_dir / "raft.snapshot").exists(), 30,
                   what="the leader's first snapshot")
        n4 = start_new_node(cluster, "n4")
        r = http("POST", f"{cluster.followers()[0].url}/v1/cluster/members",
                 {"id": "n4", "raft": f"127.0.0.1:{n4.raft_port}",
                  "http": f"127.0.0.1:{n4.http_port}"}, timeout_s=60)
        assert r.status == 201, r.body
        wait_until(lambda: published_total(n4) == len(bodies), 30,
                   what="n4 holding every message")
        assert "snapshot_loaded" in n4.log_path.read_text()
        got = drain(n4.url)
        assert sorted(got) == sorted(bodies)
    finally:
        cluster.stop()


def test_membership_survives_restarts_with_outdated_cluster_files(tmp_path: Path) -> None:
    """n1..n3's files never list n4 and still list n2: restarted, they follow the membership in
    their log and snapshot (n1, n3, n4), elect a leader among it, and take writes."""
    cluster = Cluster(tmp_path, size=3, extra_config=COMPACT_OFTEN)
    try:
        cluster.start()
        cluster.wait_ready()
        n1, n2, n3 = cluster.nodes
        assert http("PUT", f"{n1.url}/v1/queues/{QUEUE}").status == 201
        n4 = start_new_node(cluster, "n4")
        assert http("POST", f"{n1.url}/v1/cluster/members",
                    {"id": "n4", "raft": f"127.0.0.1:{n4.raft_port}",
                     "http": f"127.0.0.1:{n4.http_port}"}, timeout_s=60).status == 201
        assert http("DELETE", f"{n1.url}/v1/cluster/members/n2", timeout_s=60).status == 200
        cluster.kill(n2)
        for i in range(100):  # past logCompactionMinEntries: restarts load a snapshot
            assert http("POST", f"{n1.url}/v1/queues/{QUEUE}/messages",
                        {"messages": [{"body": f"r{i}"}]}).status == 201
        for node in (n1, n3):
            cluster.restart(node)
            wait_until(lambda node=node: http("GET", f"{node.url}/readyz").status == 200, 30,
                       what=f"{node.id} ready after restart")
            assert sorted(members(node)) == ["n1", "n3", "n4"]
        r = http("POST", f"{n3.url}/v1/queues/{QUEUE}/messages", {"messages": [{"body": "end"}]})
        assert r.status == 201, r.body
        assert len(drain(n4.url)) == 101
    finally:
        cluster.stop()


def test_concurrent_changes_one_wins_the_other_is_told_to_retry(cluster: Cluster) -> None:
    """Two adds sent together: one is carried out, the other answered 409
    membership_change_in_progress (retryable), never both half-done."""
    url = cluster.nodes[0].url
    ports = free_ports(4)
    bodies = [{"id": f"n{4 + i}", "raft": f"127.0.0.1:{ports[2 * i]}",
               "http": f"127.0.0.1:{ports[2 * i + 1]}"} for i in range(2)]
    answers: dict[str, Any] = {}
    start = threading.Barrier(2)

    def post(body: dict[str, str]) -> None:
        start.wait()
        answers[body["id"]] = http("POST", f"{url}/v1/cluster/members", body, timeout_s=60)

    threads = [threading.Thread(target=post, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    statuses = sorted(a.status for a in answers.values())
    assert statuses == [201, 409], {k: (a.status, a.body) for k, a in answers.items()}
    loser = next(a for a in answers.values() if a.status == 409)
    assert loser.body["error"]["code"] == "membership_change_in_progress"
    assert loser.body["error"]["retryable"] is True
    winner = next(k for k, a in answers.items() if a.status == 201)
    want = sorted(["n1", "n2", "n3", winner])
    assert sorted(members(cluster.nodes[0])) == want, "the node that answered 201 lists it"
    wait_until(lambda: sorted(members(cluster.nodes[1])) == want, 15,
               what=f"{cluster.nodes[1].id} lists {want}")


def test_cli_reports_an_unreachable_node_clearly() -> None:
    port = free_ports(1)[0]
    done = cli("remove-node", "--url", f"http://127.0.0.1:{port}", "--id", "n1")
    assert done.returncode == 1
    assert "unreachable" in done.stderr and str(port) in done.stderr
    usage = cli("add-node", "--url", f"http://127.0.0.1:{port}", "--id", "n4")
    assert usage.returncode == 2 and "--raft" in usage.stderr
