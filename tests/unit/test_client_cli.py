"""`raftmq` client commands (raftmq.cli.main) against the fake node: output, --json, errors."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from raftmq import cli
from tests.unit.test_client_fake import FakeNode, dead_url, running_fake


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    yield from running_fake()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_prints_a_member_table(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", "--url", fake.url)
    assert code == 0
    lines = out.splitlines()
    assert "leader f1" in lines[0]
    assert lines[1].split() == ["ID", "ROLE", "HTTP", "RAFT", "REACHABLE"]
    assert lines[2].split()[:2] == ["f1", "leader"]


def test_url_before_the_command_and_from_the_environment(
        fake: FakeNode, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(capsys, "--url", fake.url, "queue", "ls")[0] == 0
    monkeypatch.setenv("RAFTMQ_URL", fake.url)
    code, out, _ = run(capsys, "queue", "ls")
    assert code == 0 and "no queues" in out


def test_queue_create_publish_ls_receive(fake: FakeNode,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    u = ("--url", fake.url)
    assert run(capsys, "queue", "create", "jobs", "--max-receives", "3", *u)[0] == 0
    code, out, _ = run(capsys, "publish", "jobs", "hello", "world", "-H", "a=b", *u)
    assert code == 0 and out.startswith("published 2 to jobs")
    assert fake.queues["jobs"][0]["headers"] == {"a": "b"}
    code, out, _ = run(capsys, "queue", "ls", *u)
    assert out.splitlines()[1].split()[:2] == ["jobs", "2"]
    code, out, err = run(capsys, "receive", "jobs", "--max", "1", *u)
    assert out.split("\t")[1].strip() == "hello" and "left in flight" in err
    code, out, _ = run(capsys, "receive", "jobs", "--ack", "--json", *u)
    doc = json.loads(out.splitlines()[0])
    assert doc["body"] == "world" and doc["receipt"]
    assert not fake.inflight.get(doc["receipt"]), "--ack must ack what it printed"


def test_publish_reads_stdin_lines_in_batches(fake: FakeNode, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake.queues["lines"] = []
    monkeypatch.setattr("sys.stdin", io.StringIO("l1\nl2\nl3\n"))
    code, out, _ = run(capsys, "publish", "lines", "--batch", "2", "--url", fake.url)
    assert code == 0 and len(out.splitlines()) == 2
    assert fake.bodies("lines") == ["l1", "l2", "l3"]
    assert [ref["seq"] for _, ref in fake.seen] == [0, 1]


def test_json_output_is_machine_readable(fake: FakeNode,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake.queues["a"] = []
    code, out, _ = run(capsys, "queue", "ls", "--json", "--url", fake.url)
    assert code == 0 and json.loads(out)[0]["name"] == "a"


def test_api_error_exits_1_with_the_message_and_no_traceback(
        fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "queue", "info", "nope", "--url", fake.url)
    assert code == 1 and out == ""
    assert err.startswith("raftmq: queue_not_found: queue: 'nope' does not exist")
    assert "Traceback" not in err


def test_unreachable_cluster_says_where_it_looked(capsys: pytest.CaptureFixture[str]) -> None:
    url = dead_url()
    code, _, err = run(capsys, "status", "--url", url, "--timeout-s", "1")
    assert code == 1 and "connection_failed" in err and url in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["queue"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["dlq", "redrive", "x"])  # --to is required
    assert info.value.code == 2


def test_bad_header_is_a_clear_error(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "publish", "q", "x", "-H", "novalue", "--url", fake.url)
    assert code == 1 and "expected KEY=VALUE" in err


def test_dlq_redrive_and_purge(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    fake.queues["dlq"] = [{"id": "1", "body": "x", "headers": {}}]
    code, out, _ = run(capsys, "dlq", "redrive", "dlq", "--to", "work", "--url", fake.url)
    assert code == 0 and "moved 1" in out and fake.bodies("work") == ["x"]
    code, out, _ = run(capsys, "queue", "purge", "work", "--url", fake.url)
    assert "purged 1" in out and fake.bodies("work") == []


def test_topic_publish_and_read(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    u = ("--url", fake.url)
    assert run(capsys, "topic", "create", "ev", *u)[0] == 0
    code, out, _ = run(capsys, "publish", "--topic", "ev", "e1", "e2", "--key", "k", *u)
    assert code == 0 and "0:0 0:1" in out
    code, out, err = run(capsys, "topic", "read", "ev", "--offset", "1", *u)
    assert out.splitlines() == ["0:1 key=k\te2"] and "next offset 2" in err
