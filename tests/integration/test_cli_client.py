"""The `raftmq` client commands as a user runs them (the console script's module, as processes)
against a real 3-node cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import raftmq as raftmq_lib
from tests.support.cluster import REPO, Cluster, free_ports, wait_until


def raftmq(cluster: Cluster, *args: str, stdin: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `raftmq ARGS` (node/cli.py:main, the console script) with RAFTMQ_URL set."""
    urls = ",".join(n.url for n in cluster.nodes)
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAFTMQ_URL": urls, **(env or {})})


def test_status_lists_every_member_and_the_leader(shared_cluster: Cluster) -> None:
    r = raftmq(shared_cluster, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    leader = shared_cluster.leader().id
    assert f"leader {leader}" in lines[0]
    roles = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert roles == {n.id: ("leader" if n.id == leader else "follower")
                     for n in shared_cluster.nodes}


def test_queue_lifecycle_publish_and_receive(shared_cluster: Cluster) -> None:
    assert raftmq(shared_cluster, "queue", "create", "cli-q", "--max-receives", "2").returncode == 0
    r = raftmq(shared_cluster, "publish", "cli-q", "one", "two")
    assert r.returncode == 0 and r.stdout.startswith("published 2 to cli-q"), r.stderr
    r = raftmq(shared_cluster, "publish", "cli-q", stdin="three\nfour\n")
    assert r.returncode == 0, r.stderr
    r = raftmq(shared_cluster, "queue", "ls", "--json")
    depth = {q["name"]: q["stats"]["ready"] for q in json.loads(r.stdout)}
    assert depth["cli-q"] == 4
    r = raftmq(shared_cluster, "receive", "cli-q", "--max", "10", "--ack", "--json")
    assert [json.loads(line)["body"] for line in r.stdout.splitlines()] == \
        ["one", "two", "three", "four"]
    assert raftmq(shared_cluster, "queue", "rm", "cli-q").returncode == 0
    r = raftmq(shared_cluster, "queue", "info", "cli-q")
    assert r.returncode == 1 and r.stderr.startswith("raftmq: queue_not_found:")
    assert "Traceback" not in r.stderr


def test_dlq_redrive(shared_cluster: Cluster) -> None:
    with raftmq_lib.Client([n.url for n in shared_cluster.nodes]) as mq:
        mq.create_queue("cli-work", max_receives=1, dead_letter_queue="cli-dead")
        mq.publish("cli-work", "poison")
        mq.receive("cli-work", visibility_timeout_s=0.1)
        wait_until(lambda: mq.queue_info("cli-dead")["stats"]["ready"] == 1, timeout_s=30,
                   what="the message dead-lettered")
        r = raftmq(shared_cluster, "dlq", "redrive", "cli-dead", "--to", "cli-work")
        assert r.returncode == 0 and "moved 1" in r.stdout, r.stderr
        assert [m.text for m in mq.receive("cli-work", max_messages=5)] == ["poison"]


def test_topic_commands(shared_cluster: Cluster) -> None:
    assert raftmq(shared_cluster, "topic", "create", "cli.t", "--partitions", "2").returncode == 0
    r = raftmq(shared_cluster, "publish", "--topic", "cli.t", "a", "b", "--key", "k")
    assert r.returncode == 0, r.stderr
    part = r.stdout.split(": ")[1].split(":")[0]
    r = raftmq(shared_cluster, "topic", "read", "cli.t", "--partition", part, "--json")
    assert [json.loads(line)["body"] for line in r.stdout.splitlines()] == ["a", "b"]


def test_receive_follow_streams_until_killed(shared_cluster: Cluster) -> None:
    raftmq(shared_cluster, "queue", "create", "cli-follow")
    urls = ",".join(n.url for n in shared_cluster.nodes)
    proc = subprocess.Popen([sys.executable, "-m", "raftmq.cli", "receive", "cli-follow",
                             "--follow", "--ack", "--url", urls], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        raftmq(shared_cluster, "publish", "cli-follow", "f1", "f2")
        assert proc.stdout is not None
        got = [proc.stdout.readline().split("\t")[1].strip() for _ in range(2)]
        assert got == ["f1", "f2"]
    finally:
        proc.kill()
        proc.wait(30)


def test_unreachable_url_is_a_one_line_error(shared_cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    r = raftmq(shared_cluster, "queue", "ls", "--url", url, "--timeout-s", "1")
    assert r.returncode == 1 and "connection_failed" in r.stderr and url in r.stderr
    assert "Traceback" not in r.stderr
