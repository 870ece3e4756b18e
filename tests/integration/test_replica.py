"""Replica on a real 3-node cluster of processes (tests/support/replica_node.py), no mocked Raft.

Each node process runs one Replica with the broker state wrapped to record applied commands; the
test proposes through a small msgpack control endpoint on any node.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest

from tests.support.cluster import free_ports

pytestmark = pytest.mark.integration
T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def wait_until(fn: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # a node may be restarting
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last error: {last}")


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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start()
        c.wait_stable()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that kill nothing (each uses its own keys)."""
    c = Cluster(tmp_path_factory.mktemp("shared"))
    try:
        c.start()
        c.wait_stable()
        yield c
    finally:
        c.stop()


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


def test_follower_proposals_are_forwarded_and_applied_everywhere_in_one_order(
        shared: Cluster) -> None:
    leader = shared.leader()
    follower = shared.followers(leader)[0]
    cmds = [{"op": "test.record", "key": f"fwd{i}"} for i in range(40)]
    outs = follower.call("POST", "/propose_many", {"cmds": cmds, "timeout_s": 10})
    assert [o.get("error") for o in outs] == [None] * 40
    assert [o["result"]["recorded"] for o in outs] == [c["key"] for c in cmds]
    out = leader.propose({"op": "test.record", "key": "fwd-leader"})
    assert out["result"] == {"recorded": "fwd-leader"}
    keys = [c["key"] for c in cmds] + ["fwd-leader"]
    assert sorted(wait_logs_equal(shared.live(), keys)) == sorted(keys)


def test_group_commit_packs_concurrent_proposals_into_few_entries(shared: Cluster) -> None:
    leader = shared.leader()
    before = leader.status()["stats"]
    cmds = [{"op": "test.record", "key": i, "pad": "x" * 100} for i in range(500)]
    outs = leader.call("POST", "/propose_many", {"cmds": cmds, "timeout_s": 20})
    assert all("result" in o for o in outs), outs[:3]
    assert [o["result"]["recorded"] for o in outs] == list(range(500))  # each its own result
    after = leader.status()["stats"]
    commands = after["commands_submitted"] - before["commands_submitted"]
    entries = after["entries_submitted"] - before["entries_submitted"]
    assert commands >= 500
    # ~130 B per command and 60 KB entries: 500 commands fit in one entry, and the window
    # lets at most 16 go before packing starts; allow for ticks slipping in between.
    assert entries <= 40, f"{commands} commands went in {entries} entries"


def test_poison_command_does_not_wedge_the_cluster(shared: Cluster) -> None:
    leader = shared.leader()
    follower = shared.followers(leader)[0]
    bad = follower.propose({"op": "test.raise", "key": "poison"})
    assert bad["result"]["error"]["code"] == "internal_error"
    for i in range(5):
        node = (leader, follower)[i % 2]
        assert node.propose({"op": "test.record", "key": f"after{i}"})["result"] == {
            "recorded": f"after{i}"}
    keys = ["poison"] + [f"after{i}" for i in range(5)]
    assert wait_logs_equal(shared.live(), keys) == keys  # applied everywhere, in this order


def test_no_quorum_fails_within_deadline_then_recovers(cluster: Cluster) -> None:
    leader = cluster.leader()
    stopped = cluster.followers(leader)
    for n in stopped:
        n.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        out = leader.propose({"op": "test.record", "key": "no-quorum"}, timeout_s=3.0)
        elapsed = time.monotonic() - t0
        assert out.get("error") in ("commit_timeout", "no_leader"), out
        assert elapsed < 3.0 + 1.5, f"took {elapsed:.1f}s for a 3 s deadline"
        # Once the lone node knows no leader for longer than the grace, it fails fast.
        wait_until(lambda: leader.status()["leader_id"] is None, 20, "leader stepping down")

        def fails_fast() -> bool:
            t = time.monotonic()
            o = leader.propose({"op": "test.record", "key": "fast"}, timeout_s=8.0)
            return o.get("error") == "no_leader" and time.monotonic() - t < 1.0

        wait_until(fails_fast, 15, "no_leader answered at once")
    finally:
        for n in stopped:
            n.signal(signal.SIGCONT)
    new_leader = cluster.leader()

    def commits() -> bool:
        return "result" in new_leader.propose({"op": "test.record", "key": "after"}, 5.0)

    wait_until(commits, 30, "a commit after SIGCONT")


def test_leader_kill_elects_a_new_leader_and_proposals_resume(cluster: Cluster) -> None:
    old = cluster.leader()
    assert "result" in old.propose({"op": "test.record", "key": "before"})
    old.kill()
    survivors = cluster.live()
    new = cluster.leader(among=survivors)
    assert new is not old

    def commit_after() -> dict[str, Any] | None:
        out = survivors[0].propose({"op": "test.record", "key": "after"}, 3.0)
        return out if "result" in out else None

    assert wait_until(commit_after, 30, "a commit through the new leader")["result"] == {
        "recorded": "after"}
    # "after" may be there more than once: a retry after an unknown outcome can commit twice.
    log = wait_logs_equal(survivors, ["before", "after"])
    assert log[0] == "before" and set(log[1:]) == {"after"}


def queue_ready(node: Node, name: str) -> int:
    info = node.call("GET", f"/queue_info?name={name}", timeout_s=5)
    return int(info["stats"]["ready"])


def publish_one(node: Node, queue: str, i: int) -> None:
    msg = {"body": f"m{i}".encode(), "headers": {}, "priority": 0, "delay_s": 0, "group": None,
           "dedup_id": None, "ttl_s": 0, "correlation_id": None, "reply_to": None}
    out = node.propose({"op": "queue.publish", "queue": queue, "messages": [msg]})
    assert "messages" in out["result"], out


def wait_same_state(nodes: list[Node], timeout_s: float = 30.0) -> None:
    def same() -> bool:
        digests = [n.call("GET", "/digest", timeout_s=5)["crc32"] for n in nodes]
        return len(set(digests)) == 1

    wait_until(same, timeout_s, "byte-identical broker states on every node")


def test_restart_from_snapshot_and_wiped_follower_catch_up(tmp_path: Path) -> None:
    """Compaction every 30 entries: a killed follower restarts from its snapshot + journal, and
    a follower whose data dir was wiped is sent the leader's snapshot; both end identical."""
    from storage.validate import queue_config

    c = Cluster(tmp_path, extra=["--raft-conf", '{"logCompactionMinEntries": 30}'])
    try:
        c.start()
        leader = c.wait_stable()
        cfg = queue_config({})
        assert "result" in leader.propose({"op": "queue.create", "queue": "q", "config": cfg})
        for i in range(100):
            publish_one(leader, "q", i)
        a, b = c.followers(leader)
        a.kill()
        for i in range(100, 150):
            publish_one(leader, "q", i)
        a.start()
        wait_until(lambda: queue_ready(a, "q") == 150, 30, "restarted follower at 150 messages")
        b.kill()
        shutil.rmtree(b.data_dir)
        b.data_dir.mkdir()
        for i in range(150, 160):
            publish_one(leader, "q", i)
        b.start()
        wait_until(lambda: queue_ready(b, "q") == 160, 30, "wiped follower at 160 messages")
        # It was sent a snapshot: it applied far fewer publishes than the queue holds. (The
        # state is installed a moment before pysyncobj moves applied_index: poll for it.)
        assert len([e for e in b.applied_log() if e[0] == "queue.publish"]) < 100
        wait_until(lambda: b.status()["applied_index"] > 100, 10, "applied index after install")
        wait_same_state(list(c.nodes.values()))
    finally:
        c.stop()


def test_leader_ticks_about_twice_a_second_and_listeners_fire_everywhere(
        shared: Cluster) -> None:
    leader = shared.leader()
    followers = shared.followers(leader)
    before = {n.id: (n.status(), n.call("GET", "/listener")["calls"]) for n in shared.live()}
    t0 = time.monotonic()
    time.sleep(3.0)  # a measurement window without traffic, not synchronisation
    elapsed_s = time.monotonic() - t0
    ticks = (leader.status()["stats"]["entries_submitted"]
             - before[leader.id][0]["stats"]["entries_submitted"])
    assert 0.5 * elapsed_s <= ticks <= 3 * elapsed_s, f"{ticks} ticks in {elapsed_s:.1f}s"
    for f in followers:
        st = f.status()
        assert st["stats"]["entries_submitted"] == before[f.id][0]["stats"]["entries_submitted"]
        assert st["applied_index"] >= before[f.id][0]["applied_index"] + ticks - 1
        # Apply listeners ran on every node's loop (coalesced: at least once, at most per entry).
        calls = f.call("GET", "/listener")["calls"] - before[f.id][1]
        assert 1 <= calls <= ticks + 1


def test_single_node_cluster_commits_and_restarts_with_its_state(tmp_path: Path) -> None:
    c = Cluster(tmp_path, size=1)
    try:
        c.start()
        node = c.wait_stable()
        outs = node.call("POST", "/propose_many",
                         {"cmds": [{"op": "test.record", "key": i} for i in range(20)]})
        assert [o["result"]["recorded"] for o in outs] == list(range(20))
        node.kill()
        node.start()
        wait_until(lambda: len(node.applied_log()) >= 20, 20, "journal replay after restart")
        assert [k for _, k in node.applied_log()[:20]] == list(range(20))
    finally:
        c.stop()


def test_loop_threading_mode_replicates_in_one_order(tmp_path: Path) -> None:
    """threading_mode="loop" (doTick from the event loop, the measured alternative) works too."""
    c = Cluster(tmp_path, extra=["--threading-mode", "loop"])
    try:
        c.start()
        leader = c.wait_stable()
        follower = c.followers(leader)[0]
        cmds = [{"op": "test.record", "key": i} for i in range(30)]
        outs = follower.call("POST", "/propose_many", {"cmds": cmds})
        assert [o["result"]["recorded"] for o in outs] == list(range(30))
        assert sorted(wait_logs_equal(c.live(), list(range(30)))) == list(range(30))
    finally:
        c.stop()


def test_a_command_larger_than_an_entry_goes_alone_and_replicates(shared: Cluster) -> None:
    leader = shared.leader()
    follower = shared.followers(leader)[0]
    before = follower.status()["stats"]["entries_submitted"]
    big = {"op": "test.record", "key": "big", "pad": os.urandom(1_000_000)}
    small = [{"op": "test.record", "key": f"s{i}"} for i in range(5)]
    outs = follower.call("POST", "/propose_many", {"cmds": [*small, big], "timeout_s": 20})
    assert [o["result"]["recorded"] for o in outs] == [*(c["key"] for c in small), "big"]
    assert follower.status()["stats"]["entries_submitted"] - before == 2  # small ones, big one
    keys = [*(c["key"] for c in small), "big"]
    assert wait_logs_equal(shared.live(), keys) == keys


def test_barrier_on_a_follower_sees_every_earlier_write(shared: Cluster) -> None:
    leader = shared.leader()
    for f in shared.followers(leader):
        for i in range(3):
            key = f"{f.id}-{i}"
            assert "result" in leader.propose({"op": "test.record", "key": key})
            # Right after the barrier returns (no polling), the follower has applied the write.
            out = f.call("POST", "/barrier")
            assert ["test.record", key] in out["log"]
