"""Backup and restore (issue 8 item 1, docs/deploy.md section 5): traffic on one cluster, a
backup through `raftmq backup`, a NEW cluster seeded by `raftmq restore` receives the same
messages, keeps topic offsets and producer dedup; a corrupt or truncated file is refused."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from storage.snapshot import decode_payload
from tests.integration.test_auth import ADMIN, TOKENS
from tests.integration.test_auth import CONSUMER as CONSUMER_TOKEN
from tests.integration.test_auth import PRODUCER as PRODUCER_TOKEN
from tests.integration.test_cluster_up import Up, call, free_base_port
from tests.support.cluster import REPO, Cluster, http, running_cluster, wait_until

PRODUCER = "backup-producer"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def traffic(url: str) -> dict[str, Any]:
    """Queue q: 10 published, 3 received (1 acked, 2 in flight); topic t: 6 messages, group g
    committed at partition 0 offset 2; producer PRODUCER applied seq 0..2."""
    assert http("PUT", f"{url}/v1/queues/q").status == 201
    r = http("POST", f"{url}/v1/queues/q/messages",
             {"messages": [{"body": f"m{i}"} for i in range(10)]})
    assert r.status == 201, r.body
    r = http("POST", f"{url}/v1/queues/q/receive",
             {"max_messages": 3, "visibility_timeout_s": 1})
    got = r.body["messages"]
    assert len(got) == 3, r.body
    assert http("POST", f"{url}/v1/queues/q/ack",
                {"receipts": [got[0]["receipt"]]}).body["acked"] == 1
    assert http("PUT", f"{url}/v1/topics/t", {"partitions": 2}).status == 201
    r = http("POST", f"{url}/v1/topics/t/messages",
             {"messages": [{"body": f"e{i}", "key": f"k{i}"} for i in range(6)]})
    assert r.status == 201, r.body
    assert http("POST", f"{url}/v1/topics/t/groups/g/offsets",
                {"offsets": [{"partition": 0, "offset": 2}]}).status == 200
    producer = http("POST", f"{url}/v1/producers", {"id": PRODUCER}).body
    for seq in range(3):
        r = http("POST", f"{url}/v1/queues/q/messages",
                 {"messages": [{"body": f"p{seq}"}],
                  "producer": {"id": PRODUCER, "epoch": producer["epoch"], "seq": seq}})
        assert r.status == 201 and not r.body["duplicate"], r.body
    offsets = http("GET", f"{url}/v1/topics/t/groups/g/offsets").body
    return {"acked": got[0]["body"], "epoch": producer["epoch"], "offsets": offsets,
            "topic": http("GET", f"{url}/v1/topics/t").body}


def drain(url: str) -> list[str]:
    bodies: list[str] = []
    while True:
        r = http("POST", f"{url}/v1/queues/q/receive",
                 {"max_messages": 100, "ack": "auto", "wait_s": 2})
        assert r.status == 200, r.body
        if not r.body["messages"]:
            return bodies
        bodies += [m["body"] for m in r.body["messages"]]


def test_restored_cluster_has_the_backed_up_messages_offsets_and_dedup(tmp_path: Path) -> None:
    backup = tmp_path / "backup.snapshot"
    for sub in ("old", "new"):
        (tmp_path / sub).mkdir()
    with running_cluster(tmp_path / "old") as old:
        url = old.nodes[0].url
        before = traffic(url)
        follower = old.followers()[0]
        done = cli("backup", "--url", follower.url, "-o", str(backup))
        assert done.returncode == 0, done.stderr
        assert "applied index" in done.stdout
        decode_payload(backup.read_bytes())  # a checked storage snapshot
        r = http("POST", f"{url}/v1/queues/q/messages", {"messages": [{"body": "after"}]})
        assert r.status == 201  # written after the backup: not in it
    new = Cluster(tmp_path / "new")
    try:
        done = cli("restore", "--snapshot", str(backup), "--config", str(new.config_path),
                   "--all", "--data-dir", str(new.root))
        assert done.returncode == 0, done.stderr
        new.start()
        new.wait_ready()
        assert_restored(new, before)
        stats = http("GET", f"{new.nodes[0].url}/v1/queues/q?consistency=linearizable").body
        new.stop()  # kill -9 every node: the restored history must survive a restart
        new.start()
        new.wait_ready()
        again = http("GET", f"{new.nodes[2].url}/v1/queues/q?consistency=linearizable").body
        assert again["stats"]["published_total"] == stats["stats"]["published_total"]
        assert again["stats"]["acked_total"] == stats["stats"]["acked_total"]
        r = http("POST", f"{new.nodes[2].url}/v1/queues/q/messages",
                 {"messages": [{"body": "restarted"}]})
        assert r.status == 201, r.body
    finally:
        new.stop()


def assert_restored(new: Cluster, before: dict[str, Any]) -> None:
    url = new.nodes[1].url
    assert http("GET", f"{url}/v1/topics/t").body == before["topic"]
    assert http("GET", f"{url}/v1/topics/t/groups/g/offsets").body == before["offsets"]
    # producer dedup holds: seq 2 again is a duplicate, seq 3 is new
    r = http("POST", f"{url}/v1/queues/q/messages",
             {"messages": [{"body": "p2"}],
              "producer": {"id": PRODUCER, "epoch": before["epoch"], "seq": 2}})
    assert r.status == 201 and r.body["duplicate"], r.body
    r = http("POST", f"{url}/v1/queues/q/messages",
             {"messages": [{"body": "p3"}],
              "producer": {"id": PRODUCER, "epoch": before["epoch"], "seq": 3}})
    assert r.status == 201 and not r.body["duplicate"], r.body
    # every unacked message, the in-flight ones once their lease ends; not the acked one,
    # not the one published after the backup
    expected = sorted([f"m{i}" for i in range(10) if f"m{i}" != before["acked"]]
                      + ["p0", "p1", "p2", "p3"])
    got: list[str] = []

    def all_received() -> bool:
        got.extend(drain(url))
        return sorted(got) == expected

    wait_until(all_received, 30, what=f"the restored messages {expected}")
    assert sorted(got) == expected
    members = http("GET", f"{url}/v1/cluster").body["members"]
    assert sorted(m["id"] for m in members) == ["n1", "n2", "n3"]  # the new file's, not old


def test_backup_headers_and_a_corrupt_file_is_refused(shared_cluster: Cluster,
                                                      tmp_path: Path) -> None:
    url = shared_cluster.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/bk").status == 201
    with urllib.request.urlopen(f"{url}/v1/cluster/snapshot", timeout=60) as resp:
        data = resp.read()
        assert int(resp.headers["X-Raftmq-Index"]) > 0
        assert int(resp.headers["X-Raftmq-Term"]) > 0
        assert int(resp.headers["Content-Length"]) == len(data)
    decode_payload(data)
    good = tmp_path / "good.snapshot"
    good.write_bytes(data)
    corrupt = tmp_path / "corrupt.snapshot"
    corrupt.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    truncated = tmp_path / "truncated.snapshot"
    truncated.write_bytes(data[: len(data) // 2])
    config = shared_cluster.config_path
    for bad, why in ((corrupt, "checksum"), (truncated, "checksum"),
                     (tmp_path / "missing", "cannot read")):
        done = cli("restore", "--snapshot", str(bad), "--config", str(config), "--id", "n1",
                   "--data-dir", str(tmp_path / "dir"))
        assert done.returncode == 1 and why in done.stderr, done.stderr
        assert not (tmp_path / "dir").exists()  # nothing seeded
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "raft.journal").write_bytes(b"x")
    done = cli("restore", "--snapshot", str(good), "--config", str(config), "--id", "n1",
               "--data-dir", str(busy))
    assert done.returncode == 1 and "not empty" in done.stderr, done.stderr


@pytest.mark.parametrize("level", ["bogus"])
def test_backup_refuses_a_bad_consistency(shared_cluster: Cluster, level: str) -> None:
    r = http("GET", f"{shared_cluster.nodes[0].url}/v1/cluster/snapshot?consistency={level}")
    assert r.status == 400 and r.body["error"]["code"] == "invalid_request"


def test_backup_needs_an_admin_token_when_authentication_is_on(tmp_path: Path) -> None:
    (tmp_path / "tokens.toml").write_text(TOKENS)
    with running_cluster(tmp_path, size=1, extra_config='auth_file = "tokens.toml"',
                         token=ADMIN) as c:
        url = c.nodes[0].url
        for token, status in ((None, 401), (PRODUCER_TOKEN, 403), (CONSUMER_TOKEN, 403)):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = http("GET", f"{url}/v1/cluster/snapshot", headers=headers)
            assert r.status == status, (token, r.status)
        out = tmp_path / "b.snapshot"
        assert cli("backup", "--url", url, "-o", str(out)).returncode == 1  # no token
        assert not out.exists()
        done = cli("backup", "--url", url, "-o", str(out), "--token", ADMIN)
        assert done.returncode == 0, done.stderr
        decode_payload(out.read_bytes())


def test_restore_into_a_cluster_up_layout(shared_cluster: Cluster, tmp_path: Path) -> None:
    url = shared_cluster.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/cu").status == 201
    assert http("POST", f"{url}/v1/queues/cu/messages",
                {"messages": [{"body": "a"}, {"body": "b"}]}).status == 201
    backup = tmp_path / "cu.snapshot"
    assert cli("backup", "--url", url, "-o", str(backup)).returncode == 0
    base = free_base_port()
    root = tmp_path / "up"
    done = cli("restore", "--snapshot", str(backup), "--cluster-up", str(root),
               "--base-port", str(base))
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines()] == ["n1:", "n2:", "n3:"]
    up = Up(root, base)
    try:
        up.read_until("Ctrl-C")
        got = call(f"http://127.0.0.1:{base + 2}/v1/queues/cu/receive", "POST",
                   {"max_messages": 10})
        assert sorted(m["body"] for m in got["messages"]) == ["a", "b"]
    finally:
        assert up.stop() == 0
