"""Checker sensitivity: for every anomaly class, one history that has it and one that does not.

The failing history must be flagged with exactly that class (so each check is precise), and the
passing history, which differs in the one detail that matters, must be valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.checker import (
    QUEUE_CLASSES,
    TOPIC_CLASSES,
    TXN_CLASSES,
    availability,
    check_queue,
    check_topic,
    check_txn,
)
from tests.chaos.histories import FAIL, INFO, H

CLEAN = {"ready": 0, "in_flight": 0, "delayed": 0, "published_total": 2, "acked_total": 2}


def only(result: dict[str, Any], cls: str) -> None:
    flagged = {c for c, a in result["anomalies"].items() if a["count"]}
    assert flagged == {cls}, result["anomalies"]
    assert result["valid"] is False


def valid(result: dict[str, Any]) -> None:
    flagged = {c: a for c, a in result["anomalies"].items() if a["count"]}
    assert flagged == {}
    assert result["valid"] is True


def delivered_and_acked(h: H, value: str, server_ms: int, count: int = 1) -> None:
    receipts = h.receive([(value, count, server_ms)])
    h.ack(receipts)


# ---- queues ------------------------------------------------------------------------------


def test_queue_clean_run_is_valid() -> None:
    h = H().publish(["a"]).publish(["b"], seq=1)
    delivered_and_acked(h, "a", 1000)
    delivered_and_acked(h, "b", 1001)
    h.final_queue({"n1": CLEAN, "n2": CLEAN})
    result = check_queue(h.ops)
    valid(result)
    assert result["stats"]["publish_acked"] == 2
    assert result["stats"]["acked_values"] == 2


def test_lost_acked_publish_never_delivered() -> None:
    h = H().publish(["a"]).publish(["b"], seq=1)
    delivered_and_acked(h, "b", 1000)
    only(check_queue(h.ops), "lost")
    assert check_queue(h.ops)["anomalies"]["lost"]["examples"] == ["a"]


@pytest.mark.parametrize(("durability", "fault", "allowed"), [
    ("memory", "power-all", True), ("memory", "power-majority", True),
    ("memory", "power-one", True), ("memory", "kill-all", False), ("fsync", "power-all", False)])
def test_memory_loses_acked_publishes_only_to_a_power_loss(
        durability: str, fault: str, allowed: bool) -> None:
    from chaos.faults import Fault
    from chaos.runner import allow_memory_loss

    h = H().publish(["a"]).publish(["b"], seq=1)
    delivered_and_acked(h, "b", 1000)
    result = check_queue(h.ops)
    allow_memory_loss(result, durability, [Fault(id=1, kind=fault, start_s=1.0, duration_s=1.0)])
    if allowed:
        valid(result)
        assert result["stats"]["lost_memory_allowed"] == 1
    else:
        only(result, "lost")


def test_unacked_publish_is_not_lost() -> None:
    """A publish whose outcome is unknown (info) may be missing: not an anomaly."""
    h = H().publish(["a"], type_=INFO).publish(["b"], seq=0, producer="p2")
    delivered_and_acked(h, "b", 1000)
    valid(check_queue(h.ops))


def test_unacked_delivered_but_never_acked() -> None:
    h = H().publish(["a"])
    h.receive([("a", 1, 1000)])
    only(check_queue(h.ops), "unacked")


def test_ack_with_unknown_outcome_may_have_removed_the_message() -> None:
    h = H().publish(["a"])
    h.ack(h.receive([("a", 1, 1000)]), type_=INFO)
    valid(check_queue(h.ops))
    h = H().publish(["a"])
    h.ack(h.receive([("a", 1, 1000)]), type_=FAIL)
    only(check_queue(h.ops), "unacked")


def test_stale_ack_does_not_count_as_ack() -> None:
    h = H().publish(["a"])
    r = h.receive([("a", 1, 1000)])
    h.ack(r, stale=r)
    only(check_queue(h.ops), "unacked")
    r2 = h.receive([("a", 2, 20_000)])
    h.ack(r2)
    valid(check_queue(h.ops))


def test_unexpected_value_never_published() -> None:
    h = H().publish(["a"])
    delivered_and_acked(h, "a", 1000)
    delivered_and_acked(h, "zz", 1001)
    only(check_queue(h.ops), "unexpected")


def test_aborted_read_of_definitely_failed_publish() -> None:
    h = H().publish(["a"], type_=FAIL)
    delivered_and_acked(h, "a", 1000)
    only(check_queue(h.ops), "aborted_read")


def test_failed_then_retried_publish_may_be_read() -> None:
    h = H().publish(["a"], type_=FAIL).publish(["a"], type_=INFO)
    delivered_and_acked(h, "a", 1000)
    valid(check_queue(h.ops))


def test_duplicated_value_stored_twice() -> None:
    h = H().publish(["a"], type_=INFO).publish(["a"])
    delivered_and_acked(h, "a", 1000)
    r = h.receive([("a", 1, 1001)], ids={"a": "id-other"})
    h.ack(r)
    only(check_queue(h.ops), "duplicated")


def test_acked_then_redelivered() -> None:
    h = H().publish(["a"])
    delivered_and_acked(h, "a", 1000)
    h.receive([("a", 2, 50_000)])
    result = check_queue(h.ops)
    only(result, "acked_then_redelivered")


def test_redelivery_after_ack_with_unknown_outcome_is_allowed() -> None:
    h = H().publish(["a"])
    r = h.receive([("a", 1, 1000)])
    h.ack(r, type_=INFO)
    delivered_and_acked(h, "a", 50_000, count=2)
    valid(check_queue(h.ops))


def test_lease_violation_second_delivery_inside_the_lease() -> None:
    h = H().publish(["a"])
    h.receive([("a", 1, 1000)], process="c1")
    delivered_and_acked(h, "a", 5000, count=2)  # lease of the first ran until 11000
    only(check_queue(h.ops), "lease_violation")


def test_redelivery_after_lease_expiry_or_nack_is_fine() -> None:
    h = H().publish(["a"]).publish(["b"], seq=1)
    h.receive([("a", 1, 1000)])
    delivered_and_acked(h, "a", 11_000, count=2)  # exactly at expiry
    rb = h.receive([("b", 1, 12_000)])
    h.nack(rb)
    delivered_and_acked(h, "b", 12_001, count=2)
    valid(check_queue(h.ops))


def test_fifo_violation_later_message_first() -> None:
    h = H().publish(["a"]).publish(["b"], seq=1)
    delivered_and_acked(h, "b", 1000)
    delivered_and_acked(h, "a", 1001)
    only(check_queue(h.ops), "fifo_violation")


def test_fifo_violation_inside_one_receive() -> None:
    h = H().publish(["a", "b"])
    h.ack(h.receive([("b", 1, 1000), ("a", 1, 1000)]))
    only(check_queue(h.ops), "fifo_violation")


def test_fifo_ignores_unobserved_first_delivery() -> None:
    """`a` was first delivered by a receive whose answer was lost: no order evidence."""
    h = H().publish(["a"]).publish(["b"], seq=1)
    delivered_and_acked(h, "b", 1000)
    delivered_and_acked(h, "a", 20_000, count=2)
    valid(check_queue(h.ops))


def test_divergent_final_state() -> None:
    h = H().publish(["a"]).publish(["b"], seq=1)
    delivered_and_acked(h, "a", 1000)
    delivered_and_acked(h, "b", 1001)
    h.final_queue({"n1": CLEAN, "n2": {**CLEAN, "acked_total": 1}})
    only(check_queue(h.ops), "divergent")


def test_not_drained_final_state() -> None:
    h = H().publish(["a"]).publish(["b"], seq=1)
    delivered_and_acked(h, "a", 1000)
    delivered_and_acked(h, "b", 1001)
    left = {**CLEAN, "ready": 1}
    h.final_queue({"n1": left, "n2": left})
    only(check_queue(h.ops), "not_drained")


# ---- topics ------------------------------------------------------------------------------


def clean_topic() -> H:
    h = H().tpublish(["a"], [(0, 0)]).tpublish(["b"], [(0, 1)], seq=1)
    for node in ("n1", "n2"):
        h.tread([(0, "a"), (0 + 1, "b")], node=node, final=True)
    return h


def test_topic_clean_run_is_valid() -> None:
    valid(check_topic(clean_topic().ops))


def test_topic_lost_everywhere() -> None:
    h = H().tpublish(["a"], [(0, 0)]).tpublish(["b"], [(0, 1)], seq=1)
    h.tread([(1, "b")], node="n1", final=True).tread([(1, "b")], node="n2", final=True)
    only(check_topic(h.ops), "lost")


def test_topic_lost_on_one_node_is_divergence() -> None:
    h = H().tpublish(["a"], [(0, 0)])
    h.tread([(0, "a")], node="n1", final=True).tread([], node="n2", final=True)
    result = check_topic(h.ops)
    flagged = {c for c, a in result["anomalies"].items() if a["count"]}
    assert flagged == {"lost_on_node", "divergent"}


def test_topic_unexpected_and_aborted() -> None:
    h = clean_topic().tread([(2, "zz")])
    only(check_topic(h.ops), "unexpected")
    h = clean_topic().tpublish(["c"], None, type_=FAIL, seq=2).tread([(2, "c")])
    only(check_topic(h.ops), "aborted_read")


def test_topic_inconsistent_offsets() -> None:
    h = H().tpublish(["a"], [(0, 0)]).tpublish(["c"], [(0, 1)], producer="p2")
    h.tread([(0, "a"), (1, "c")])
    valid(check_topic(h.ops))
    h.tread([(1, "d")], node="n2")
    result = check_topic(h.ops)
    assert result["anomalies"]["inconsistent_offsets"]["count"] == 1
    assert result["anomalies"]["unexpected"]["count"] == 1  # d was never published


def test_topic_duplicated_value_at_two_offsets() -> None:
    h = clean_topic().tread([(0, "a"), (1, "b"), (2, "a")], node="n3")
    only(check_topic(h.ops), "duplicated")


def test_topic_offset_gap() -> None:
    h = H().tpublish(["a"], [(0, 0)]).tpublish(["b"], [(0, 2)], seq=1)
    h.tread([(0, "a"), (2, "b")], final=True)
    only(check_topic(h.ops), "offset_gap")


def test_topic_nonmonotonic_send() -> None:
    h = H().tpublish(["a"], [(0, 1)]).tpublish(["b"], [(0, 0)], seq=1)
    h.tread([(0, "b"), (1, "a")], final=True)
    only(check_topic(h.ops), "nonmonotonic_send")


def test_committed_offset_regression() -> None:
    h = clean_topic().commit(2).committed(2)
    valid(check_topic(h.ops))
    h.committed(1)
    only(check_topic(h.ops), "committed_offset_regression")


def test_committed_offset_with_unknown_commit_may_or_may_not_land() -> None:
    h = clean_topic().commit(2).commit(5, type_=INFO).committed(2).committed(5)
    valid(check_topic(h.ops))


def test_committed_offset_read_before_any_commit_is_unconstrained() -> None:
    valid(check_topic(clean_topic().committed(None).ops))


def test_stale_linearizable_read() -> None:
    h = H().tpublish(["a"], [(0, 0)]).tpublish(["b"], [(0, 1)], seq=1)
    h.tread([(0, "a"), (1, "b")])
    valid(check_topic(h.ops))
    h.tread([(0, "a")], node="n2")  # invoked after b was acked at offset 1: must see it
    only(check_topic(h.ops), "stale_read")


def test_local_read_may_be_stale() -> None:
    h = H().tpublish(["a"], [(0, 0)]).tpublish(["b"], [(0, 1)], seq=1)
    h.tread([(0, "a"), (1, "b")], node="n1", final=True)
    h.tread([(0, "a"), (1, "b")], node="n2", final=True)
    h.tread([(0, "a")], node="n3", local=True)  # a lagging follower, asked for local state
    valid(check_topic(h.ops))


# ---- availability ------------------------------------------------------------------------


def test_availability_recovery_time_after_heal() -> None:
    h = H().publish(["a"]).nemesis("start", 1)
    h.publish(["b"], type_=FAIL, seq=1).nemesis("stop", 1)
    h.publish(["c"], type_=FAIL, seq=1).publish(["d"], seq=1)
    report = availability(h.ops)
    (window,) = report["faults"]
    assert window["fault"] == "kill"
    assert window["ok_writes"] == 0
    # heal at op 5 (5 ms); the first ok write after it completes at op 9 (9 ms)
    assert window["first_ok_write_after_heal_s"] == pytest.approx(0.004)
    assert report["outcomes"]["publish"] == {"ok": 2, "fail": 2, "info": 0}


def test_every_class_has_a_test() -> None:
    source = Path(__file__).read_text()
    for cls in set(QUEUE_CLASSES) | set(TOPIC_CLASSES):
        if cls in ("lost", "unexpected", "aborted_read", "duplicated", "divergent"):
            continue  # shared names, tested for both
        assert f'"{cls}"' in source, cls


# ---- transactions (consume-transform-produce) --------------------------------------------


def ob(v: str, txn: str) -> str:
    from chaos.txn import output_body

    return output_body(v, txn)


def clean_txn() -> H:
    """a and b published; a consumed by T1, b by T2 (after an abort T0 and a redelivery)."""
    h = H().xpublish(["a", "b"]).xreceive([("a", "ra1"), ("b", "rb1")])
    h.txn("T0", ["b"], ["rb1"], type_=FAIL)  # aborted: b must come back
    h.txn("T1", ["a"], ["ra1"])
    h.xreceive([("b", "rb2")]).txn("T2", ["b"], ["rb2"], type_=INFO).txn("T2", ["b"], ["rb2"])
    return h.xout([ob("a", "T1"), ob("b", "T2")]).xdrained()


def test_txn_clean_run_is_valid() -> None:
    result = check_txn(clean_txn().ops)
    valid(result)
    assert result["stats"]["committed"] == 2 and result["stats"]["aborted"] == 1


def test_txn_lost_input_never_consumed() -> None:
    h = H().xpublish(["a", "b"]).xreceive([("a", "ra1")]).txn("T1", ["a"], ["ra1"])
    h.xout([ob("a", "T1")]).xdrained()
    only(check_txn(h.ops), "lost_input")
    h = H().xpublish(["a", "b"], type_=INFO).xreceive([("a", "ra1")]).txn("T1", ["a"], ["ra1"])
    valid(check_txn(h.xout([ob("a", "T1")]).xdrained().ops))  # b's publish may not exist


def test_txn_lost_output_of_a_committed_transaction() -> None:
    h = H().xpublish(["a"]).xreceive([("a", "ra1")]).txn("T1", ["a", "zz"], ["ra1", "rz"])
    h.xout([ob("a", "T1")]).xdrained()
    only(check_txn(h.ops), "lost_output")


def test_txn_duplicated_output_one_input_two_transactions() -> None:
    h = H().xpublish(["a"]).xreceive([("a", "ra1")]).txn("T1", ["a"], ["ra1"], type_=INFO)
    h.xreceive([("a", "ra2")]).txn("T2", ["a"], ["ra2"])
    valid(check_txn(h.xout([ob("a", "T2")]).xdrained().ops))  # T1 did not commit: fine
    h.xout([ob("a", "T1")])  # ... but it did: a was consumed twice
    only(check_txn(h.ops), "duplicated_output")


def test_txn_duplicated_output_one_output_stored_twice() -> None:
    h = H().xpublish(["a"]).xreceive([("a", "ra1")]).txn("T1", ["a"], ["ra1"])
    h.xout([ob("a", "T1")], ids=["m1"]).xout([ob("a", "T1")], ids=["m2"]).xdrained()
    only(check_txn(h.ops), "duplicated_output")


def test_txn_output_of_an_aborted_transaction() -> None:
    h = H().xpublish(["a"]).xreceive([("a", "ra1")]).txn("T0", ["a"], ["ra1"], type_=FAIL)
    h.xreceive([("a", "ra2")]).txn("T1", ["a"], ["ra2"])
    valid(check_txn(h.xout([ob("a", "T1")]).xdrained().ops))
    h.xout([ob("a", "T0")])
    result = check_txn(h.ops)
    assert result["anomalies"]["aborted_output"]["count"] == 1
    assert result["valid"] is False


def test_txn_unexpected_output_and_input() -> None:
    h = clean_txn().xout([ob("a", "T9")])
    only(check_txn(h.ops), "unexpected_output")
    h = clean_txn().xout(["garbage"])
    only(check_txn(h.ops), "unexpected_output")
    h = clean_txn().xreceive([("zz", "rz")])
    only(check_txn(h.ops), "unexpected_input")


def test_txn_aborted_input_not_redelivered() -> None:
    h = H().xpublish(["a"]).xreceive([("a", "ra1")]).txn("T0", ["a"], ["ra1"], type_=FAIL)
    h.txn("T1", ["a"], ["ra1"])  # the abort acked a after all: no new delivery before T1
    only(check_txn(h.xout([ob("a", "T1")]).xdrained().ops), "not_redelivered")


def test_txn_not_drained() -> None:
    h = H().xpublish(["a"]).xreceive([("a", "ra1")]).txn("T1", ["a"], ["ra1"])
    valid(check_txn(h.xout([ob("a", "T1")]).xdrained().ops))
    only(check_txn(h.xdrained(False).ops), "not_drained")


def test_txn_every_class_has_a_failing_test() -> None:
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    for cls in TXN_CLASSES:
        assert f'"{cls}"' in source, cls


# ---- live subscribe (SSE) ------------------------------------------------------------------


def test_subscription_events_are_checked_like_reads() -> None:
    h = clean_topic().tsub([(0, 0, "a"), (0, 1, "b")])
    valid(check_topic(h.ops))
    h = clean_topic().tsub([(0, 1, "a")], node="n2")  # a is at offset 0 everywhere else
    result = check_topic(h.ops)
    assert result["anomalies"]["inconsistent_offsets"]["count"] == 1
    assert result["anomalies"]["duplicated"]["count"] == 1
    only(check_topic(clean_topic().tsub([(0, 2, "zz")]).ops), "unexpected")


def test_subscribe_gap_in_one_subscription() -> None:
    h = H().tpublish(["a"], [(0, 0)]).tpublish(["b"], [(0, 1)], seq=1)
    h.tpublish(["c"], [(0, 2)], seq=2)
    for node in ("n1", "n2"):
        h.tread([(0, "a"), (1, "b"), (2, "c")], node=node, final=True)
    valid(check_topic(h.tsub([(0, 1, "b"), (0, 2, "c")]).ops))  # starts anywhere
    only(check_topic(h.tsub([(0, 0, "a"), (0, 2, "c")], node="n2").ops), "subscribe_gap")
