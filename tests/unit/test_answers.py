"""A queue publish's answer is kept as ids until read (storage/answers.py): it reads, compares,
encodes and is stored by producers exactly like the list of dicts it stands for."""

from __future__ import annotations

import json

import msgpack
import pytest
from aiohttp.test_utils import make_mocked_request

from node.codec import dump_json, jsonable, respond
from storage.answers import Deliveries, PublishedIds, encode_default
from storage.producers import pack_result, unpack_result
from tests.unit.test_queues import Broker

PLAIN = [{"id": "1", "duplicate": False}, {"id": "2", "duplicate": False},
         {"id": "3", "duplicate": False}]


def published(b: Broker, *messages: dict[str, object]) -> dict[str, object]:
    return b.ok(op="queue.publish", queue="q", messages=list(messages))


def test_a_publish_answer_is_ids_that_read_like_the_list_of_dicts() -> None:
    b = Broker()
    b.create("q")
    answer = published(b, {"body": "a"}, {"body": "b"}, {"body": "c"})["messages"]
    assert isinstance(answer, PublishedIds)  # no dict per message on nodes nobody asks
    assert answer == PLAIN and list(answer) == PLAIN
    assert PLAIN == answer  # noqa: SIM300 - the list on the left: the reflected comparison
    assert len(answer) == 3 and answer[1] == PLAIN[1] and answer[-1] == PLAIN[-1]
    assert answer[1:] == PLAIN[1:] and answer != PLAIN[:2]
    assert repr(answer) == repr(PLAIN)


def test_duplicates_in_a_batch_and_of_earlier_batches_carry_the_original_id() -> None:
    b = Broker()
    b.create("q")
    published(b, {"body": "a", "dedup_id": "x"})
    answer = published(b, {"body": "b", "dedup_id": "y"}, {"body": "a", "dedup_id": "x"},
                       {"body": "c"}, {"body": "b", "dedup_id": "y"})["messages"]
    assert answer == [{"id": "2", "duplicate": False}, {"id": "1", "duplicate": True},
                      {"id": "3", "duplicate": False}, {"id": "2", "duplicate": True}]
    assert b.stats()["published_total"] == 3


def test_the_node_encodes_it_as_the_plain_list_in_json_and_msgpack() -> None:
    result = {"messages": PublishedIds([1, 2, 3]), "duplicate": False}
    want = {"messages": PLAIN, "duplicate": False}
    assert json.loads(dump_json(result)) == want
    assert jsonable({**result, "body": b"\xff"})["messages"] == PLAIN  # the slow JSON path
    request = make_mocked_request("POST", "/", headers={"Accept": "application/msgpack"})
    body = respond(request, result).body
    assert isinstance(body, bytes) and msgpack.unpackb(body) == want
    with pytest.raises(TypeError):  # the hook knows answers only: other objects still fail
        msgpack.packb({"x": object()}, default=encode_default)


def test_a_producer_stores_the_compact_form_and_answers_a_retry_with_the_same_list() -> None:
    new = {"messages": PublishedIds([7, 8, 9]), "duplicate": False}
    assert pack_result(new)["messages"] == {"range": [7, 3]}
    mixed = {"messages": PublishedIds([7, 5, 8], [False, True, False]), "duplicate": False}
    stored = pack_result(mixed)
    assert stored["messages"] == {"ids": [7, 5, 8], "dups": [False, True, False]}
    mixed["messages"].ids[0] = 99  # the answer handed out changes; the stored one does not
    assert unpack_result(stored)["messages"] == [
        {"id": "7", "duplicate": False}, {"id": "5", "duplicate": True},
        {"id": "8", "duplicate": False}]


def test_a_receive_answer_is_taken_at_apply_and_reads_like_the_views() -> None:
    """Deliveries keep (message, headers, receive count, delivery, lease) from apply time: a
    later nack and redelivery, or dead-lettering's new headers, do not change the answer."""
    b = Broker()
    b.create("q", max_receives=2, dead_letter_queue="dlq")
    published(b, {"body": "a", "headers": {"k": "v"}}, {"body": "b"})
    first = b.ok(op="queue.receive", queue="q", max_messages=1)["messages"]
    assert isinstance(first, Deliveries)
    view = first[0]
    assert view["id"] == "1" and view["body"] == b"a" and view["headers"] == {"k": "v"}
    assert view["receive_count"] == 1 and view["receipt"].startswith("1.")
    b.ok(op="queue.nack", queue="q", receipts=[view["receipt"]])
    second = b.ok(op="queue.receive", queue="q", max_messages=1)["messages"]
    b.ok(op="queue.nack", queue="q", receipts=[second[0]["receipt"]])  # dead-lettered now
    assert second[0]["receive_count"] == 2 and second[0]["receipt"] != view["receipt"]
    assert first == [view] and first[0]["receive_count"] == 1  # as it was answered
    assert first[0]["headers"] == {"k": "v"}  # not the dead letter's x-dead-letter headers
    auto = b.ok(op="queue.receive", queue="q", max_messages=5, ack="auto")["messages"]
    assert [(m["body"], m["receipt"], m["lease_expires_at"]) for m in auto] == [
        (b"b", None, None)]
    assert json.loads(dump_json({"messages": first}))["messages"][0]["body"] == "a"
