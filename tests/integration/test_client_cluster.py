"""The Python client against a real 3-node cluster: the calls an application makes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import raftmq
from tests.support.cluster import Cluster, wait_until


def urls(cluster: Cluster) -> list[str]:
    return [n.url for n in cluster.nodes]


def test_publish_through_a_follower_receive_and_ack_through_another(
        shared_cluster: Cluster) -> None:
    follower, other = shared_cluster.followers()[:2]
    with raftmq.Client(follower.url) as pub, raftmq.Client(other.url) as sub:
        pub.create_queue("c-fifo", visibility_timeout_s=30)
        pub.publish("c-fifo", ["a", b"b", {"body": "c", "headers": {"k": "v"}}])
        pub.publish("c-fifo", b"\xff\x00binary")
        msgs = sub.receive("c-fifo", max_messages=10)
        assert [m.body for m in msgs] == ["a", "b", "c", b"\xff\x00binary"]
        assert msgs[2].headers == {"k": "v"}
        assert all(m.receipt and m.receive_count == 1 for m in msgs)
        assert sub.ack("c-fifo", msgs).count == 4
        info = sub.queue_info("c-fifo")
        assert info["stats"]["ready"] == 0 and info["stats"]["in_flight"] == 0


def test_receive_acks_the_previous_batch_in_the_same_request(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        mq.create_queue("c-acknext")
        mq.publish("c-acknext", ["a", "b", "c"])
        first = mq.receive("c-acknext", max_messages=2)
        rest = mq.receive("c-acknext", max_messages=2, ack_receipts=first)
        assert [m.body for m in rest] == ["c"]
        stats = mq.queue_info("c-acknext")["stats"]
        assert (stats["in_flight"], stats["acked_total"]) == (1, 2)
        assert mq.receive("c-acknext", ack_receipts=rest) == []
        assert mq.queue_info("c-acknext")["stats"]["acked_total"] == 3


def test_stale_receipt_after_redelivery_does_not_ack(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        mq.create_queue("c-vis")
        mq.publish("c-vis", "x")
        first = mq.receive("c-vis", visibility_timeout_s=0.2)[0]
        again = mq.receive("c-vis", wait_s=10, visibility_timeout_s=30)
        assert [m.id for m in again] == [first.id] and again[0].receive_count == 2
        stale = mq.ack("c-vis", first)
        assert stale.count == 0 and stale.stale == [first.receipt]
        assert mq.ack("c-vis", again).count == 1


def test_long_poll_receive_is_woken_by_a_publish_elsewhere(shared_cluster: Cluster) -> None:
    a, b = shared_cluster.nodes[0].url, shared_cluster.nodes[2].url
    with raftmq.Client(a) as waiter, raftmq.Client(b) as pub:
        waiter.create_queue("c-poll")
        got: list[raftmq.Message] = []
        t = threading.Thread(target=lambda: got.extend(waiter.receive("c-poll", wait_s=15)))
        t.start()
        pub.publish("c-poll", "wake")
        t.join(20)
        assert [m.body for m in got] == ["wake"]


def test_errors_are_typed(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        with pytest.raises(raftmq.QueueNotFound) as info:
            mq.publish("c-missing", "x")
        assert info.value.status == 404 and info.value.node
        with pytest.raises(raftmq.InvalidRequest):
            mq.create_queue("c-bad", visibility_timeout_s=-1)
        mq.create_queue("c-conf", max_receives=2)
        with pytest.raises(raftmq.AlreadyExists):
            mq.create_queue("c-conf", max_receives=3)
        assert mq.create_queue("c-conf", max_receives=2)["max_receives"] == 2


def test_nack_redrive_and_purge(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        mq.create_queue("c-work", max_receives=1, dead_letter_queue="c-dlq")
        mq.publish("c-work", ["p", "q"])
        for m in mq.receive("c-work", max_messages=2):
            mq.nack("c-work", m)
        dead = mq.queue_info("c-dlq")["stats"]["ready"]
        assert dead == 2
        mq.create_queue("c-back")
        assert mq.redrive("c-dlq", "c-back") == 2
        assert mq.purge("c-back") == 2


def test_topics_through_the_client(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        mq.create_topic("c.events", partitions=2)
        mq.create_queue("c-sub")
        mq.bind("c-sub", "c.*")
        res = mq.publish_topic("c.events", ["e1", "e2", "e3"], key="order-7")
        parts = {r.partition for r in res.messages}
        assert len(parts) == 1, "one key, one partition"
        part = parts.pop()
        assert [r.offset for r in res.messages] == [0, 1, 2]
        batch = mq.read_topic("c.events", part, offset=1)
        assert [m.body for m in batch.messages] == ["e2", "e3"] and batch.next_offset == 3
        assert [m.body for m in mq.receive("c-sub", max_messages=10)] == ["e1", "e2", "e3"]
        mq.commit_offsets("c.events", "g1", {part: 3})
        lag = {p["partition"]: p["lag"] for p in mq.group_offsets("c.events", "g1")}
        assert lag[part] == 0


def test_transaction_is_atomic(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        mq.create_queue("c-in")
        mq.create_queue("c-out")
        mq.publish("c-in", ["1", "2"])
        msgs = mq.receive("c-in", max_messages=2)
        with mq.transaction() as txn:
            txn.ack("c-in", msgs[0])
            txn.publish("c-out", "one")
        with pytest.raises(raftmq.StaleReceipt), mq.transaction() as bad:
            bad.ack("c-in", [msgs[0], msgs[1]])
            bad.publish("c-out", "never")
        assert [m.body for m in mq.receive("c-out", max_messages=10)] == ["one"]
        assert mq.queue_info("c-in")["stats"]["in_flight"] == 1


def test_fenced_zombie_producer_is_refused(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster), producer_id="c-zombie") as old, \
            raftmq.Client(urls(shared_cluster), producer_id="c-zombie") as new:
        old.create_queue("c-z")
        old.publish("c-z", "from-old")
        new.publish("c-z", "from-new")
        with pytest.raises(raftmq.ProducerFenced):
            old.publish("c-z", "late")
        bodies = [m.body for m in new.receive("c-z", max_messages=10)]
        assert bodies == ["from-old", "from-new"]


def test_request_reply(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as requester, \
            raftmq.Client(urls(shared_cluster)) as server:
        requester.create_queue("c-rpc")

        def serve() -> None:
            req = server.receive("c-rpc", wait_s=15)[0]
            assert req.reply_to and req.correlation_id
            server.publish(req.reply_to, {"body": req.text.upper(),
                                          "correlation_id": req.correlation_id})
            server.ack("c-rpc", req)

        t = threading.Thread(target=serve)
        t.start()
        reply = requester.request("c-rpc", "ping", timeout_s=15)
        t.join(20)
        assert reply.body == "PING"


def test_async_client(shared_cluster: Cluster) -> None:
    async def run() -> list[str]:
        async with raftmq.AsyncClient(urls(shared_cluster)) as mq:
            await mq.create_queue("c-async")
            await asyncio.gather(*(mq.publish("c-async", f"m{i}") for i in range(10)))
            msgs = await mq.receive("c-async", max_messages=10)
            await mq.ack("c-async", msgs)
            assert mq.producer is not None and mq.producer.seq == 10
            return sorted(m.text for m in msgs)

    assert asyncio.run(run()) == sorted(f"m{i}" for i in range(10))


def test_cluster_status(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        st = mq.cluster_status()
    assert st["leader"] in {m["id"] for m in st["members"]} and len(st["members"]) == 3


def collect(it: Iterator[Any], count: int, out: list[Any], last_text: str | None = None) -> None:
    for item in it:
        out.append(item)
        if len(out) >= count or (last_text is not None and item.text == last_text):
            return


def test_live_subscribe_and_queue_stream(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster)) as mq:
        mq.create_topic("c.live.a")
        mq.create_topic("c.live.b")
        mq.create_queue("c-push")
        got: list[raftmq.TopicMessage] = []
        sub = mq.subscribe("c.live.*")
        t = threading.Thread(target=collect, args=(sub, 1000, got, "y"))
        t.start()
        wait_until(lambda: publish_until_seen(mq, got), timeout_s=20, what="live events")
        mq.publish_topic("c.live.b", "y")
        t.join(20)
        sub.close()
        assert {(m.topic, m.text) for m in got} == {("c.live.a", "x"), ("c.live.b", "y")}
        mq.publish("c-push", ["p1", "p2", "p3"])
        pushed: list[raftmq.Message] = []
        for msg in mq.stream("c-push", prefetch=2):
            pushed.append(msg)
            mq.ack("c-push", msg)
            if len(pushed) == 3:
                break
        assert [m.text for m in pushed] == ["p1", "p2", "p3"]


def publish_until_seen(mq: raftmq.Client, got: list[raftmq.TopicMessage]) -> bool:
    """The subscription starts when its stream opens: publish until it has seen something."""
    if not got:
        mq.publish_topic("c.live.a", "x")
    return bool(got)


def test_subscribe_resumes_on_another_node_without_gaps_or_repeats(cluster: Cluster) -> None:
    first, second = cluster.nodes[0], cluster.nodes[1]
    with raftmq.Client([first.url, second.url]) as sub_client, \
            raftmq.Client([second.url, cluster.nodes[2].url]) as pub:
        pub.create_topic("c.resume")
        got: list[raftmq.TopicMessage] = []
        t = threading.Thread(target=collect, args=(sub_client.subscribe("c.resume"), 6, got),
                             daemon=True)
        t.start()
        wait_until(lambda: publish_until_seen_topic(pub, got), timeout_s=20, what="first event")
        seen = got[0].offset
        pub.publish_topic("c.resume", ["b1", "b2"])
        wait_until(lambda: len(got) >= 3, timeout_s=20, what="events before the kill")
        cluster.kill(first)
        pub.publish_topic("c.resume", ["a1", "a2", "a3"])
        t.join(60)
        offsets = [m.offset for m in got]
        assert offsets == list(range(seen, seen + 6)), offsets
        assert [m.text for m in got[-3:]] == ["a1", "a2", "a3"]


def publish_until_seen_topic(pub: raftmq.Client, got: list[raftmq.TopicMessage]) -> bool:
    if not got:
        pub.publish_topic("c.resume", "first")
    return bool(got)


def test_msgpack_codec_carries_raw_bytes(shared_cluster: Cluster) -> None:
    with raftmq.Client(urls(shared_cluster), codec="msgpack") as mq:
        mq.create_queue("c-mp")
        mq.publish("c-mp", [b"\x00\xffraw", "text"])
        msgs = mq.receive("c-mp", max_messages=2)
        assert [m.data for m in msgs] == [b"\x00\xffraw", b"text"]
        assert mq.ack("c-mp", msgs).count == 2
        with pytest.raises(raftmq.QueueNotFound):
            mq.queue_info("c-mp-missing")
