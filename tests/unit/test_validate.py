"""Validators: the documented error, naming the field, for every kind of bad input."""

from __future__ import annotations

from typing import Any

import pytest

from storage import validate
from storage.errors import BrokerError
from storage.limits import Limits
from storage.queues import DEFAULT_QUEUE_CONFIG


def fails(code: str, field: str, fn: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(BrokerError) as info:
        fn(*args, **kw)
    assert info.value.code == code
    assert field in info.value.message, info.value.message


@pytest.mark.parametrize("bad", ["", ".x", "a\n", "a b", "a/b", "x" * 201, 5, None, "é"])
def test_bad_names(bad: Any) -> None:
    fails("invalid_request", "queue", validate.name, bad, "queue")


@pytest.mark.parametrize("good", ["a", "A-b_c.d", "0", "_", "-x", "x" * 200])
def test_good_names(good: str) -> None:
    assert validate.name(good, "queue") == good


def test_queue_config_defaults_and_full_shape() -> None:
    assert validate.queue_config({}) == DEFAULT_QUEUE_CONFIG
    assert validate.queue_config(None) == DEFAULT_QUEUE_CONFIG
    c = validate.queue_config({"visibility_timeout_s": 5, "overflow": "drop_oldest",
                               "dead_letter_queue": "d", "unknown": 1})
    assert c["visibility_timeout_s"] == 5 and c["overflow"] == "drop_oldest"
    assert c.keys() == DEFAULT_QUEUE_CONFIG.keys()


@pytest.mark.parametrize("field,value", [
    ("visibility_timeout_s", -1), ("visibility_timeout_s", 43_201), ("visibility_timeout_s", "5"),
    ("max_receives", 1.5), ("max_receives", True), ("max_length", -1), ("overflow", "drop"),
    ("durability", "disk"), ("dead_letter_queue", "bad name"), ("delay_s", float("nan")),
    ("message_ttl_s", float("inf")),
])
def test_queue_config_rejects(field: str, value: Any) -> None:
    fails("invalid_request", field, validate.queue_config, {field: value})


def test_config_must_be_object() -> None:
    fails("invalid_request", "config", validate.queue_config, [1])


def test_publish_messages_normalizes() -> None:
    [m] = validate.publish_messages([{"body": "héllo", "extra": 1}])
    assert m == {"body": "héllo".encode(), "headers": {}, "priority": 0, "delay_s": 0,
                 "ttl_s": 0, "group": None, "dedup_id": None, "correlation_id": None,
                 "reply_to": None}
    [m] = validate.publish_messages([{"body": b"\x00", "priority": 9, "group": "g"}])
    assert m["body"] == b"\x00" and m["priority"] == 9 and m["group"] == "g"


@pytest.mark.parametrize("msg,field", [
    ({}, "messages[0].body"), ({"body": 5}, "messages[0].body"),
    ({"body": "x", "headers": []}, "messages[0].headers"),
    ({"body": "x", "headers": {"k": 1}}, "messages[0].headers.k"),
    ({"body": "x", "priority": "1"}, "messages[0].priority"),
    ({"body": "x", "priority": -1}, "messages[0].priority"),
    ({"body": "x", "delay_s": -1}, "messages[0].delay_s"),
    ({"body": "x", "ttl_s": "1"}, "messages[0].ttl_s"),
    ({"body": "x", "group": 1}, "messages[0].group"),
    ({"body": "x", "dedup_id": ""}, "messages[0].dedup_id"),
    ({"body": "x", "reply_to": ["a"]}, "messages[0].reply_to"),
    ({"body": "\ud800"}, "messages[0].body"),
    ("text", "messages[0]"),
])
def test_publish_message_rejects(msg: Any, field: str) -> None:
    fails("invalid_request", field, validate.publish_messages, [msg])


def test_publish_limits() -> None:
    limits = Limits(body_bytes_max=4, batch_messages_max=2, headers_max=1,
                    header_key_bytes_max=2, header_value_bytes_max=3)
    fails("message_too_large", "messages[0].body", validate.publish_messages,
          [{"body": "12345"}], limits)
    fails("batch_too_large", "messages", validate.publish_messages,
          [{"body": "1"}] * 3, limits)
    fails("invalid_request", "messages", validate.publish_messages, [], limits)
    fails("invalid_request", "headers", validate.publish_messages,
          [{"body": "1", "headers": {"a": "1", "b": "2"}}], limits)
    fails("invalid_request", "abc", validate.publish_messages,
          [{"body": "1", "headers": {"abc": "1"}}], limits)
    fails("invalid_request", "a", validate.publish_messages,
          [{"body": "1", "headers": {"a": "1234"}}], limits)
    assert len(validate.publish_messages([{"body": "1234"}] * 2, limits)) == 2


def test_receive_request() -> None:
    assert validate.receive_request({}) == {"max_messages": 1, "wait_s": 0,
                                            "visibility_timeout_s": None, "ack": "manual",
                                            "ack_receipts": None}
    r = validate.receive_request({"max_messages": 1000, "wait_s": 20, "ack": "auto",
                                  "visibility_timeout_s": 0})
    assert r["max_messages"] == 1000 and r["ack"] == "auto" and r["visibility_timeout_s"] == 0
    fails("invalid_request", "max_messages", validate.receive_request, {"max_messages": 0})
    fails("invalid_request", "max_messages", validate.receive_request, {"max_messages": 1001})
    fails("invalid_request", "wait_s", validate.receive_request, {"wait_s": 21})
    fails("invalid_request", "ack", validate.receive_request, {"ack": "sometimes"})
    assert validate.receive_request({"ack_receipts": ["1.2"]})["ack_receipts"] == ["1.2"]
    fails("invalid_request", "ack_receipts", validate.receive_request, {"ack_receipts": []})
    fails("invalid_request", "ack_receipts[1]", validate.receive_request,
          {"ack_receipts": ["1.2", 7]})


def test_receipts_and_producer_ref() -> None:
    assert validate.receipts_list(["1.2"]) == ["1.2"]
    fails("invalid_request", "receipts", validate.receipts_list, [])
    fails("invalid_request", "receipts[1]", validate.receipts_list, ["1.2", 3])
    fails("invalid_request", "receipts", validate.receipts_list, "1.2")
    assert validate.producer_ref({"id": "p", "epoch": 1, "seq": 0}) == \
        {"id": "p", "epoch": 1, "seq": 0}
    fails("invalid_request", "producer.seq", validate.producer_ref,
          {"id": "p", "epoch": 1, "seq": -1})
    fails("invalid_request", "producer.epoch", validate.producer_ref,
          {"id": "p", "epoch": True, "seq": 0})
    fails("invalid_request", "producer.id", validate.producer_ref, {"epoch": 1, "seq": 0})
    fails("invalid_request", "producer", validate.producer_ref, None)


def test_seconds_and_count() -> None:
    assert validate.seconds(1.5, "x") == 1.5
    fails("invalid_request", "x", validate.seconds, True, "x")
    fails("invalid_request", "x", validate.seconds, 11, "x", maximum=10)
    assert validate.count(3, "n", minimum=1, maximum=3) == 3
    fails("invalid_request", "n", validate.count, 4, "n", maximum=3)


def test_apply_side_check_accepts_normalized_and_validates_the_rest() -> None:
    normalized = validate.publish_messages([{"body": "x", "headers": {"k": "v"},
                                             "priority": 3, "delay_s": 1.5}])
    assert validate.publish_messages_checked(normalized) is normalized
    assert validate.publish_messages_checked([{"body": "x"}])[0]["body"] == b"x"
    for bad in ([{**normalized[0], "priority": 10}], [{**normalized[0], "ttl_s": -1}],
                [{**normalized[0], "headers": {"k": 1}}], [{**normalized[0], "group": ""}],
                [{**normalized[0], "delay_s": float("nan")}], [], "x"):
        fails("invalid_request", "messages", validate.publish_messages_checked, bad)
    fails("message_too_large", "messages[0].body", validate.publish_messages_checked,
          [{**normalized[0], "body": b"12345"}], Limits(body_bytes_max=4))


def test_receipt_and_string_field_limits() -> None:
    limits = Limits(receipts_max=2, receipt_chars_max=5, string_field_chars_max=3)
    fails("invalid_request", "receipts", validate.receipts_list, ["1.1"] * 3, limits)
    fails("invalid_request", "receipts[0]", validate.receipts_list, ["123456"], limits)
    assert validate.receipts_list(["1.1", "12345"], limits) == ["1.1", "12345"]
    fails("invalid_request", "messages[0].group", validate.publish_messages,
          [{"body": "x", "group": "abcd"}], limits)
    assert validate.publish_messages([{"body": "x", "group": "abc"}], limits)[0]["group"] == "abc"


def test_queues_max_and_txn_parts_max() -> None:
    from storage.state import BrokerState

    s = BrokerState(Limits(queues_max=2, txn_parts_max=2))
    assert "error" not in s.apply({"op": "queue.create", "queue": "a", "config": {}}, 1)
    err = s.apply({"op": "queue.create", "queue": "b",
                   "config": {"dead_letter_queue": "c"}}, 1)["error"]
    assert err["code"] == "overloaded" and "queues_max" in err["message"]
    assert "error" not in s.apply({"op": "queue.create", "queue": "b", "config": {}}, 1)
    assert s.apply({"op": "queue.create", "queue": "c", "config": {}}, 1)["error"]["code"] == \
        "overloaded"
    assert [q["name"] for q in s.list_queues(1)] == ["a", "b"]
    part = {"queue": "a", "messages": [{"body": "x"}]}
    err = s.apply({"op": "txn", "publish": [part, part, part]}, 1)["error"]
    assert err["code"] == "invalid_request" and "txn_parts_max" in err["message"]
    assert s.queue_info("a", 1)["stats"]["published_total"] == 0


def test_wire_form_drops_only_default_fields_and_apply_reads_them_back() -> None:
    """The node proposes messages without their default fields; apply must accept them with
    the cheap check and treat them exactly like the full form (same state, same answers)."""
    from storage.state import BrokerState

    raw = [{"body": "plain"}, {"body": b"\x00bin"},
           {"body": "x", "priority": 0, "headers": {}, "delay_s": 0, "group": None},
           {"body": "y", "priority": 4, "headers": {"k": "v"}, "delay_s": 0.0, "ttl_s": 60,
            "group": "g", "dedup_id": "d", "correlation_id": "c", "reply_to": "r"}]
    wire = validate.publish_messages_wire(raw)
    assert wire[:3] == [{"body": b"plain"}, {"body": b"\x00bin"}, {"body": b"x"}]
    full = validate.publish_messages([raw[3]])[0]
    assert wire[3] == {k: v for k, v in full.items() if k != "delay_s"}  # delay 0: the default
    assert validate.publish_messages_checked(wire) is wire  # apply: no copies, no re-validation
    states = []
    for messages in (wire, validate.publish_messages(raw)):
        state = BrokerState()
        state.apply({"op": "queue.create", "queue": "q", "config": {}}, 1_000)
        published = state.apply({"op": "queue.publish", "queue": "q", "messages": messages},
                                1_001)
        received = state.apply({"op": "queue.receive", "queue": "q", "max_messages": 10,
                                "visibility_timeout_s": None, "ack": "manual"}, 1_002)
        states.append((published, received, state.encode_snapshot()))
    assert states[0] == states[1]
    # the priority 4 message comes first; the others got the default priority 0 and headers {}
    assert [m["headers"] for m in states[0][1]["messages"]] == [{"k": "v"}, {}, {}, {}]
    assert [m["priority"] for m in states[0][1]["messages"]] == [4, 0, 0, 0]


def test_wire_form_keeps_every_error_of_the_full_validation() -> None:
    limits = Limits(body_bytes_max=4, batch_messages_max=2)
    fails("message_too_large", "messages[1].body", validate.publish_messages_wire,
          [{"body": "ok"}, {"body": "12345"}], limits)
    fails("batch_too_large", "messages", validate.publish_messages_wire, [{"body": "a"}] * 3,
          limits)
    fails("invalid_request", "messages[0].body", validate.publish_messages_wire, [{"body": 5}])
    fails("invalid_request", "messages[0].body", validate.publish_messages_wire,
          [{"body": "\ud800"}])
    fails("invalid_request", "messages[0].body", validate.publish_messages_wire, [{"bdy": "x"}])
    fails("invalid_request", "messages", validate.publish_messages_wire, [])
    # apply, given a wire-form message that slipped past the node, still refuses it
    for bad in ([{"body": "text, not bytes"}], [{"body": b"12345"}], [{"body": b"x", "ttl_s": -1}],
                [{"body": b"x", "headers": None, "priority": True}]):
        with pytest.raises(BrokerError):
            validate.publish_messages_checked(bad, limits)
