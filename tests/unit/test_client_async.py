"""AsyncClient against the fake node, and the client's pure helpers (bodies, backoff, URLs)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import pytest

import raftmq
from raftmq._http import RetryPolicy, parse_urls
from raftmq.errors import from_response
from raftmq.models import Message, encode_messages
from tests.unit.test_client_fake import FakeNode, running_fake


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    yield from running_fake()


def test_concurrent_tasks_on_one_producer_send_seqs_in_order(fake: FakeNode) -> None:
    async def run() -> None:
        async with raftmq.AsyncClient(fake.url, timeout_s=10) as mq:
            await mq.create_queue("q")
            fake.faults.drop_after_apply = 3
            await asyncio.gather(*(mq.publish("q", f"m{i}") for i in range(20)))

    asyncio.run(run())
    sent = [ref["seq"] for _, ref in fake.seen]
    assert sent == sorted(sent), "one request in flight per producer: seqs never go back"
    assert sorted(set(sent)) == list(range(20))
    assert len(sent) == 23, "three dropped answers, three retries with the same seq"
    assert sorted(fake.bodies("q")) == sorted(f"m{i}" for i in range(20))


def test_async_transaction_and_message_iterator(fake: FakeNode) -> None:
    async def run() -> list[str]:
        async with raftmq.AsyncClient(fake.url) as mq:
            await mq.create_queue("in")
            await mq.create_queue("out")
            await mq.publish("in", ["a", "b"])
            seen = []
            async for msg in mq.messages("in", wait_s=0, max_messages=1):
                async with mq.transaction() as txn:
                    txn.ack("in", msg)
                    txn.publish("out", msg.text.upper())
                seen.append(msg.text)
                if len(seen) == 2:
                    break
            return seen

    assert asyncio.run(run()) == ["a", "b"]
    assert fake.bodies("out") == ["A", "B"] and fake.inflight == {}


def test_bodies_str_bytes_binary_and_dicts() -> None:
    msgs = encode_messages(["t", b"utf8", b"\xff\x00", {"body": "d", "priority": 3}],
                           binary_ok=False)
    assert [m["body"] for m in msgs[:2]] == ["t", "utf8"]
    assert msgs[2] == {"body": base64.b64encode(b"\xff\x00").decode(), "body_encoding": "base64"}
    assert msgs[3] == {"body": "d", "priority": 3}
    assert encode_messages(b"\xff", binary_ok=True) == [{"body": b"\xff"}]
    back = Message.from_api({"id": "1", "receipt": "r", "body": msgs[2]["body"],
                             "body_encoding": "base64"})
    assert back.body == b"\xff\x00" and back.data == b"\xff\x00"
    with pytest.raises(ValueError, match="unknown message field"):
        encode_messages({"body": "x", "prio": 1}, binary_ok=False)
    with pytest.raises(ValueError, match="at least one"):
        encode_messages([], binary_ok=False)
    with pytest.raises(TypeError):
        encode_messages({"body": 5}, binary_ok=False)


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_initial_s=0.1, backoff_max_s=1.0)
    assert 0.05 <= policy.backoff_s(0) <= 0.1
    assert 0.2 <= policy.backoff_s(2) <= 0.4
    assert all(0.5 <= policy.backoff_s(50) <= 1.0 for _ in range(20))
    with pytest.raises(ValueError):
        RetryPolicy(timeout_s=0)


def test_urls_parse_from_a_string_a_list_or_the_default() -> None:
    assert parse_urls("http://a:1/, http://b:2") == ["http://a:1", "http://b:2"]
    assert parse_urls(None)[0] == "http://127.0.0.1:8701" and len(parse_urls(None)) == 3
    with pytest.raises(ValueError, match="http://"):
        parse_urls("a:1")
    with pytest.raises(ValueError):
        parse_urls("")


def test_error_shapes_map_to_typed_exceptions() -> None:
    err = from_response(409, {"error": {"code": "out_of_order_sequence", "message": "m",
                                        "expected_seq": 4}}, node="n1")
    assert isinstance(err, raftmq.OutOfOrderSequence) and err.details == {"expected_seq": 4}
    assert err.node == "n1" and err.status == 409 and not err.retryable
    unknown = from_response(418, {"error": {"code": "teapot", "message": "short and stout"}})
    assert type(unknown) is raftmq.RaftmqError and unknown.code == "teapot"
    plain = from_response(503, "<html>bad gateway</html>")
    assert isinstance(plain, raftmq.Unavailable) and plain.retryable
    timeout = from_response(504, {"error": {"code": "commit_timeout", "message": "?",
                                            "retryable": True}})
    assert isinstance(timeout, raftmq.CommitTimeout) and timeout.outcome_unknown
