"""The client's retry and producer-seq rules, against a fake node that misbehaves on purpose."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import raftmq
from tests.unit.test_client_fake import FakeNode, dead_url, running_fake


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    yield from running_fake()


def client(url: str | list[str], **kw: object) -> raftmq.Client:
    opts: dict[str, object] = {"timeout_s": 10.0, "attempt_timeout_s": 2.0}
    opts.update(kw)
    return raftmq.Client(url, **opts)  # type: ignore[arg-type]


def seqs(node: FakeNode) -> list[int]:
    return [ref["seq"] for _, ref in node.seen]


def test_first_publish_registers_and_seqs_count_up(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")
        for i in range(3):
            mq.publish("q", f"m{i}")
        assert mq.producer is not None and mq.producer.seq == 3
    assert fake.registrations == 1
    assert seqs(fake) == [0, 1, 2]
    assert fake.bodies("q") == ["m0", "m1", "m2"]


def test_dropped_response_is_retried_with_same_seq_and_duplicate_is_success(
        fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")
        mq.publish("q", "before")
        fake.faults.drop_after_apply = 1
        result = mq.publish("q", "once")
        assert result.duplicate, "the retry must be answered as a duplicate of the applied one"
        mq.publish("q", "after")
    assert seqs(fake) == [0, 1, 1, 2], "the retry must reuse seq 1"
    assert fake.bodies("q") == ["before", "once", "after"]
    assert result.ids == [fake.queues["q"][1]["id"]], "a duplicate answers the original id"


def test_commit_timeout_is_retried_with_same_seq(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")
        fake.faults.timeout_after_apply = 1
        result = mq.publish("q", "x")
    assert result.duplicate and seqs(fake) == [0, 0]
    assert fake.bodies("q") == ["x"]


def test_read_timeout_after_apply_is_retried_with_same_seq(fake: FakeNode) -> None:
    with client(fake.url, attempt_timeout_s=0.3) as mq:
        mq.create_queue("q")
        fake.faults.slow_s = 1.0
        threading.Timer(0.5, lambda: setattr(fake.faults, "slow_s", 0.0)).start()
        mq.publish("q", "slow")
    assert fake.bodies("q") == ["slow"]
    assert len(seqs(fake)) >= 2 and set(seqs(fake)) == {0}


def test_503_is_retried_on_the_next_url_honouring_retry_after(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")
        fake.faults.unavailable = 1
        fake.faults.retry_after_s = "0.4"
        start = time.monotonic()
        mq.publish("q", "x")
        assert time.monotonic() - start >= 0.4, "Retry-After must be honoured"
    assert fake.bodies("q") == ["x"]


def test_retry_after_holds_for_its_node_only(fake: FakeNode) -> None:
    other = FakeNode("f2").start()
    try:
        fake.faults.unavailable = 1
        fake.faults.retry_after_s = "5"
        with client([fake.url, other.url]) as mq:
            start = time.monotonic()
            assert mq.cluster_status()["node"] == "f2"
            assert time.monotonic() - start < 2.0, "the next node is tried without waiting 5 s"
    finally:
        other.stop()


def test_dead_first_url_fails_over_to_the_next(fake: FakeNode) -> None:
    with client([dead_url(), fake.url]) as mq:
        mq.create_queue("q")
        mq.publish("q", "x")
        assert mq.cluster_status()["node"] == "f1"


def test_fenced_producer_raises(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")
        mq.publish("q", "a")
        assert mq.producer is not None
        fake.fence(mq.producer.id)
        with pytest.raises(raftmq.ProducerFenced) as info:
            mq.publish("q", "zombie")
        assert info.value.status == 409 and not info.value.retryable
    assert fake.bodies("q") == ["a"]


def test_unknown_producer_reregisters_with_new_epoch_and_seq_zero(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")
        mq.publish("q", "a")
        mq.publish("q", "b")
        fake.forget_producers()
        mq.publish("q", "c")
        assert mq.producer is not None and mq.producer.seq == 1
    assert fake.registrations == 2
    assert [ref["seq"] for _, ref in fake.seen] == [0, 1, 2, 0]
    assert fake.bodies("q") == ["a", "b", "c"]


def test_producer_unknown_after_an_unknown_outcome_is_not_resent(fake: FakeNode) -> None:
    """Attempt 1 is applied but answered 504, then the producer expires: re-registering and
    sending again at seq 0 would apply the batch twice, so the client says "outcome unknown"."""
    with client(fake.url) as mq:
        mq.create_queue("q")
        mq.publish("q", "a")
        fake.faults.forget_after_apply = 1
        fake.faults.timeout_after_apply = 1
        with pytest.raises(raftmq.RaftmqError) as info:
            mq.publish("q", "once")
        assert info.value.outcome_unknown
        mq.publish("q", "b")
    assert fake.bodies("q") == ["a", "once", "b"], "applied once, never twice"


def test_error_answer_does_not_consume_the_seq(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")
        mq.publish("q", "a")
        with pytest.raises(raftmq.QueueNotFound):
            mq.publish("missing", "lost")
        mq.publish("q", "b")
    assert seqs(fake) == [0, 1, 1]
    assert fake.bodies("q") == ["a", "b"]


def test_unknown_outcome_at_deadline_fences_before_the_next_publish(fake: FakeNode) -> None:
    with client(fake.url, timeout_s=1.0, attempt_timeout_s=0.2) as mq:
        mq.create_queue("q")
        mq.publish("q", "a")
        fake.faults.slow_s = 5.0
        with pytest.raises(raftmq.RaftmqError) as info:
            mq.publish("q", "maybe")
        assert info.value.outcome_unknown
        fake.faults.slow_s = 0.0
        mq.publish("q", "b")
        assert mq.producer is not None and mq.producer.epoch == 2, "must re-register (fence)"


def test_concurrent_publishes_send_seqs_in_order(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("q")

        def worker(w: int) -> None:
            for i in range(20):
                mq.publish("q", f"{w}-{i}")

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert seqs(fake) == list(range(80)), "seqs must reach the node in order, none skipped"
    assert sorted(fake.bodies("q")) == sorted(f"{w}-{i}" for w in range(4) for i in range(20))


def test_all_nodes_unavailable_gives_up_at_the_deadline(fake: FakeNode) -> None:
    with client(fake.url, timeout_s=1.0) as mq:
        mq.create_queue("q")
        fake.faults.unavailable = 10_000
        start = time.monotonic()
        with pytest.raises(raftmq.NoLeader) as info:
            mq.publish("q", "x")
        assert time.monotonic() - start < 3.0
        assert info.value.retryable and info.value.status == 503


def test_no_node_reachable_raises_connection_failed() -> None:
    with client([dead_url(), dead_url()], timeout_s=1.0) as mq, \
            pytest.raises(raftmq.ConnectionFailed):
        mq.list_queues()


def test_exactly_once_off_sends_no_producer_and_does_not_retry_unknown(fake: FakeNode) -> None:
    with client(fake.url, exactly_once=False) as mq:
        mq.create_queue("q")
        mq.publish("q", "a")
        fake.faults.drop_after_apply = 1
        with pytest.raises(raftmq.RaftmqError) as info:
            mq.publish("q", "b")
        assert info.value.outcome_unknown
    assert [ref for _, ref in fake.seen] == [None, None]
    assert fake.registrations == 0


def test_transaction_acks_and_publishes_with_a_seq(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("in")
        mq.create_queue("out")
        mq.publish("in", ["1", "2"])
        msgs = mq.receive("in", max_messages=2)
        with mq.transaction() as txn:
            for m in msgs:
                txn.ack("in", m)
                txn.publish("out", m.text + "!")
        assert txn.result["acked"] == 2
        with pytest.raises(raftmq.StaleReceipt), mq.transaction() as txn2:
            txn2.ack("in", msgs[0])
            txn2.publish("out", "never")
    assert fake.bodies("out") == ["1!", "2!"]
    assert seqs(fake) == [0, 1, 2], "the failed transaction must not consume a seq"


def test_transaction_block_that_raises_sends_nothing(fake: FakeNode) -> None:
    with client(fake.url) as mq:
        mq.create_queue("out")
        with pytest.raises(ZeroDivisionError), mq.transaction() as txn:
            txn.publish("out", "x")
            _ = 1 / 0
    assert fake.seen == []
