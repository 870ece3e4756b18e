"""`raftmq.AsyncClient`: the asyncio client. `raftmq.Client` runs this one on a private loop.

    async with AsyncClient("http://127.0.0.1:8701,http://127.0.0.1:8702") as mq:
        await mq.create_queue("orders")
        await mq.publish("orders", ["a", {"body": "b", "headers": {"k": "v"}}])
        for msg in await mq.receive("orders", max_messages=10, wait_s=5):
            await mq.ack("orders", msg)

Publishing is exactly-once by default (`exactly_once=True`): see raftmq/_producer.py and
docs/client.md for the precise guarantee.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

from raftmq._http import RetryPolicy, StreamBroken, Transport, parse_urls
from raftmq._producer import Producer
from raftmq.errors import TopicNotFound
from raftmq.models import (
    AckResult,
    Message,
    Messages,
    MessageSpec,
    ProducerRef,
    PublishResult,
    TopicBatch,
    TopicMessage,
    TopicPublishResult,
    decode_body,
    encode_messages,
)

Receipts = str | Message | list[str] | list[Message] | list[str | Message]
TOPIC_READ_MAX_DEFAULT = 100
ATTEMPT_MARGIN_S = 5.0   # added to long polls and request-reply waits for each attempt


def receipts_of(receipts: Receipts) -> list[str]:
    """Receipt strings from a receipt, a Message, or a list of either."""
    items: list[Any] = receipts if isinstance(receipts, list) else [receipts]
    out = [r.receipt if isinstance(r, Message) else str(r) for r in items]
    if not out:
        raise ValueError("at least one receipt is needed")
    return out


def _q(name: str) -> str:
    if not name:
        raise ValueError("a name is needed")
    return quote(name, safe="")


class AsyncTransaction:
    """Consume-transform-produce in one atomic request (POST /v1/transactions).

        async with mq.transaction() as txn:
            txn.ack("in", msg)
            txn.publish("out", transform(msg.body))
        txn.result   # the node's answer; nothing is sent if the block raised
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.acks: list[dict[str, Any]] = []
        self.publishes: list[dict[str, Any]] = []
        self.result: Any = None

    def ack(self, queue: str, receipts: Receipts) -> None:
        self.acks.append({"queue": queue, "receipts": receipts_of(receipts)})

    def publish(self, queue: str, messages: Messages) -> None:
        self.publishes.append({"queue": queue, "messages": self._client._encode(messages)})

    def publish_topic(self, topic: str, messages: Messages,
                      key: str | None = None) -> None:
        msgs = _with_key(self._client._encode(messages), key)
        self.publishes.append({"topic": topic, "messages": msgs})

    async def commit(self) -> Any:
        if not self.acks and not self.publishes:
            raise ValueError("an empty transaction")
        self.result = await self._client.commit_transaction(self.acks, self.publishes)
        return self.result

    async def __aenter__(self) -> AsyncTransaction:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.commit()


def _with_key(messages: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    if key is not None:
        for msg in messages:
            msg.setdefault("key", key)
    return messages


class AsyncClient:
    """An asyncio client for any node(s) of a raftmq cluster.

    `urls`: one URL, a comma-separated string or a list (default: the local `cluster up` ports
    8701-8703). `timeout_s` bounds every call including retries; `retries` bounds retries of
    calls without a producer seq; `attempt_timeout_s` bounds one HTTP attempt (long polls add
    their wait). `exactly_once=False` publishes without a producer (at-least-once retries are
    then NOT made for outcome-unknown failures: the error is raised).
    """

    def __init__(self, urls: str | list[str] | None = None, *, timeout_s: float = 30.0,
                 retries: int = 10, attempt_timeout_s: float = 5.0, token: str | None = None,
                 exactly_once: bool = True, producer_id: str | None = None,
                 codec: str = "json") -> None:
        policy = RetryPolicy(timeout_s=timeout_s, retries=retries,
                             attempt_timeout_s=attempt_timeout_s)
        self._http = Transport(parse_urls(urls), policy, token, codec)
        self.exactly_once = exactly_once
        self._producer = Producer(self._http, producer_id)

    @property
    def urls(self) -> list[str]:
        return list(self._http.urls)

    @property
    def producer(self) -> ProducerRef | None:
        """This client's producer (id, epoch, next seq), once registered."""
        return self._producer.ref

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()

    def _encode(self, messages: Messages) -> list[dict[str, Any]]:
        return encode_messages(messages, binary_ok=self._http.codec == "msgpack")

    async def _publish(self, path: str, body: dict[str, Any]) -> Any:
        if not self.exactly_once:
            return await self._http.call("POST", path, body, retry_unknown=False)
        return await self._producer.send(path, lambda ref: {**body, "producer": ref})

    # -- queues -------------------------------------------------------------------------------

    async def create_queue(self, name: str, **config: Any) -> dict[str, Any]:
        """Create (or confirm, same config) a queue; config keys as in API.md."""
        data = await self._http.call("PUT", f"/v1/queues/{_q(name)}", config)
        return dict(data["queue"])

    async def delete_queue(self, name: str) -> None:
        await self._http.call("DELETE", f"/v1/queues/{_q(name)}")

    async def list_queues(self) -> list[dict[str, Any]]:
        data = await self._http.call("GET", "/v1/queues")
        return list(data["queues"])

    async def queue_info(self, name: str) -> dict[str, Any]:
        return dict(await self._http.call("GET", f"/v1/queues/{_q(name)}"))

    async def publish(self, queue: str, messages: Messages) -> PublishResult:
        """Publish one message or a batch (atomic). Bodies: str, bytes, or dicts with `body`
        and optional headers, priority, delay_s, group, dedup_id, ttl_s, correlation_id,
        reply_to."""
        body = {"messages": self._encode(messages)}
        return PublishResult.from_api(await self._publish(f"/v1/queues/{_q(queue)}/messages",
                                                          body))

    async def receive(self, queue: str, max_messages: int = 1, wait_s: float = 0,
                      visibility_timeout_s: float | None = None,
                      ack: str = "manual", *,
                      ack_receipts: Receipts | None = None) -> list[Message]:
        """`ack_receipts` (earlier deliveries) are acked first, in the same request and Raft
        entry, even when the receive then long-polls; stale ones are ignored (use `ack` to
        see them)."""
        body: dict[str, Any] = {"max_messages": max_messages, "wait_s": wait_s, "ack": ack}
        if visibility_timeout_s is not None:
            body["visibility_timeout_s"] = visibility_timeout_s
        if ack_receipts:
            body["ack_receipts"] = receipts_of(ack_receipts)
        data = await self._http.call("POST", f"/v1/queues/{_q(queue)}/receive", body,
                                     extra_wait_s=float(wait_s))
        return [Message.from_api(m, queue) for m in data.get("messages", [])]

    async def messages(self, queue: str, *, wait_s: float = 20, max_messages: int = 10,
                       visibility_timeout_s: float | None = None,
                       ack: str = "manual") -> AsyncIterator[Message]:
        """Receive forever (long polls): `async for msg in mq.messages("q"): ...`."""
        while True:
            for msg in await self.receive(queue, max_messages, wait_s, visibility_timeout_s, ack):
                yield msg

    async def ack(self, queue: str, receipts: Receipts) -> AckResult:
        body = {"receipts": receipts_of(receipts)}
        data = await self._http.call("POST", f"/v1/queues/{_q(queue)}/ack", body)
        return AckResult(int(data.get("acked", 0)), list(data.get("stale", [])))

    async def nack(self, queue: str, receipts: Receipts, delay_s: float = 0) -> AckResult:
        body = {"receipts": receipts_of(receipts), "delay_s": delay_s}
        data = await self._http.call("POST", f"/v1/queues/{_q(queue)}/nack", body)
        return AckResult(int(data.get("nacked", 0)), list(data.get("stale", [])))

    async def change_visibility(self, queue: str, receipts: Receipts,
                                timeout_s: float) -> dict[str, Any]:
        body = {"receipts": receipts_of(receipts), "timeout_s": timeout_s}
        return dict(await self._http.call("POST", f"/v1/queues/{_q(queue)}/visibility", body))

    async def purge(self, queue: str) -> int:
        data = await self._http.call("POST", f"/v1/queues/{_q(queue)}/purge", {})
        return int(data.get("purged", 0))

    async def redrive(self, queue: str, to: str, max_messages: int | None = None) -> int:
        """Move messages out of (dead-letter) `queue` into `to`; returns how many moved."""
        body: dict[str, Any] = {"to": to}
        if max_messages is not None:
            body["max_messages"] = max_messages
        data = await self._http.call("POST", f"/v1/queues/{_q(queue)}/redrive", body)
        return int(data.get("moved", 0))

    async def request(self, queue: str, message: MessageSpec, timeout_s: float = 10) -> Message:
        """Request-reply: publish with a temporary reply queue and wait for the reply."""
        body = {"message": self._encode(message)[0], "timeout_s": timeout_s}
        data = await self._http.call("POST", f"/v1/queues/{_q(queue)}/request", body,
                                     retry_unknown=False, extra_wait_s=timeout_s + ATTEMPT_MARGIN_S)
        return Message.from_api(data["reply"], queue)

    # -- bindings -----------------------------------------------------------------------------

    async def bind(self, queue: str, topic_pattern: str, headers: dict[str, str] | None = None,
                   match: str = "all") -> dict[str, Any]:
        body: dict[str, Any] = {"topic": topic_pattern, "match": match}
        if headers:
            body["headers"] = headers
        data = await self._http.call("POST", f"/v1/queues/{_q(queue)}/bindings", body)
        return dict(data["binding"])

    async def list_bindings(self, queue: str) -> list[dict[str, Any]]:
        data = await self._http.call("GET", f"/v1/queues/{_q(queue)}/bindings")
        return list(data.get("bindings", []))

    async def unbind(self, queue: str, binding_id: str) -> None:
        await self._http.call("DELETE", f"/v1/queues/{_q(queue)}/bindings/{_q(str(binding_id))}")

    # -- topics -------------------------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int = 1,
                           retention: dict[str, Any] | None = None,
                           **config: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"partitions": partitions, **config}
        if retention is not None:
            body["retention"] = retention
        data = await self._http.call("PUT", f"/v1/topics/{_q(name)}", body)
        return dict(data.get("topic", data))

    async def delete_topic(self, name: str) -> None:
        await self._http.call("DELETE", f"/v1/topics/{_q(name)}")

    async def list_topics(self) -> list[dict[str, Any]]:
        data = await self._http.call("GET", "/v1/topics")
        return list(data["topics"])

    async def topic_info(self, name: str) -> dict[str, Any]:
        return dict(await self._http.call("GET", f"/v1/topics/{_q(name)}"))

    async def publish_topic(self, topic: str, messages: Messages,
                            key: str | None = None) -> TopicPublishResult:
        """Publish to a topic; `key` (for messages without their own) picks the partition."""
        body = {"messages": _with_key(self._encode(messages), key)}
        data = await self._publish(f"/v1/topics/{_q(topic)}/messages", body)
        return TopicPublishResult.from_api(data)

    async def read_topic(self, topic: str, partition: int = 0, offset: int = 0,
                         max: int = TOPIC_READ_MAX_DEFAULT, wait_s: float = 0,
                         from_time: int | None = None,
                         consistency: str | None = None) -> TopicBatch:
        params = {"max": str(max), "wait_s": str(wait_s)}
        if from_time is None:
            params["offset"] = str(offset)
        else:
            params["from_time"] = str(from_time)
        if consistency is not None:
            params["consistency"] = consistency
        path = f"/v1/topics/{_q(topic)}/partitions/{int(partition)}/messages"
        data = await self._http.call("GET", path, params=params, extra_wait_s=float(wait_s))
        return TopicBatch.from_api(data, topic, partition)

    async def topic_messages(self, topic: str, partition: int = 0, offset: int = 0, *,
                             wait_s: float = 20, max: int = TOPIC_READ_MAX_DEFAULT
                             ) -> AsyncIterator[Any]:
        """Read a partition from `offset` forever (long polls), yielding TopicMessage."""
        while True:
            batch = await self.read_topic(topic, partition, offset, max, wait_s)
            for msg in batch.messages:
                yield msg
            offset = max_offset(batch, offset)

    async def commit_offsets(self, topic: str, group: str,
                             offsets: dict[int, int] | list[dict[str, int]]) -> dict[str, Any]:
        items = ([{"partition": p, "offset": o} for p, o in sorted(offsets.items())]
                 if isinstance(offsets, dict) else list(offsets))
        path = f"/v1/topics/{_q(topic)}/groups/{_q(group)}/offsets"
        return dict(await self._http.call("POST", path, {"offsets": items}))

    async def group_offsets(self, topic: str, group: str) -> list[dict[str, Any]]:
        path = f"/v1/topics/{_q(topic)}/groups/{_q(group)}/offsets"
        data = await self._http.call("GET", path)
        return list(data.get("partitions", []))

    async def subscribe(self, pattern: str) -> AsyncGenerator[TopicMessage, None]:
        """Live subscribe (GET /v1/subscribe): every message published from now on to a topic
        matching `pattern` (`*` one word, `#` any). A dropped stream is reopened on any node;
        partitions this iterator has already seen messages of are then replayed from the next
        offset, so nothing of them is missed or repeated. A partition with no message seen
        before the drop starts at its end on reconnect (what was published there meanwhile is
        readable with read_topic)."""
        cursors: dict[tuple[str, int], int] = {}
        while True:
            stream = await self._http.open_stream("/v1/subscribe", {"topics": pattern})
            try:
                for (topic, part), offset in list(cursors.items()):
                    async for msg in self._replay(topic, part, offset):
                        cursors[(topic, part)] = msg.offset + 1
                        yield msg
                async for name, data in stream.events():
                    msg = _topic_event(data)
                    key = (msg.topic, msg.partition)
                    if name != "message" or msg.offset < cursors.get(key, 0):
                        continue
                    cursors[key] = msg.offset + 1
                    yield msg
            except StreamBroken:
                pass
            finally:
                stream.close()

    async def _replay(self, topic: str, partition: int,
                      offset: int) -> AsyncGenerator[TopicMessage, None]:
        while True:
            try:
                batch = await self.read_topic(topic, partition, offset)
            except TopicNotFound:
                return
            for msg in batch.messages:
                yield msg
            offset = max_offset(batch, offset)
            if not batch.messages or offset >= batch.high_watermark:
                return

    async def stream(self, queue: str, prefetch: int = 10) -> AsyncGenerator[Message, None]:
        """Push delivery (GET /v1/queues/{queue}/stream): messages as the cluster pushes them,
        at most `prefetch` unacked at a time; ack each as usual. A dropped stream is reopened
        on any node (what it had delivered and not acked is redelivered after its visibility
        timeout: at-least-once)."""
        while True:
            stream = await self._http.open_stream(f"/v1/queues/{_q(queue)}/stream",
                                                  {"prefetch": str(prefetch)})
            try:
                async for name, data in stream.events():
                    if name == "message":
                        yield Message.from_api(data, queue)
            except StreamBroken:
                pass
            finally:
                stream.close()

    # -- exactly-once -------------------------------------------------------------------------

    async def register_producer(self) -> ProducerRef:
        """Register this client's producer now (publish does it on first use). Registering
        again bumps the epoch and fences any other client using the same producer id."""
        return await self._producer.register_now()

    def transaction(self) -> AsyncTransaction:
        return AsyncTransaction(self)

    async def commit_transaction(self, acks: list[dict[str, Any]],
                                 publishes: list[dict[str, Any]]) -> Any:
        """POST /v1/transactions: ack receipts and publish, all or nothing."""
        return await self._publish("/v1/transactions", {"ack": acks, "publish": publishes})

    # -- cluster ------------------------------------------------------------------------------

    async def cluster_status(self) -> dict[str, Any]:
        return dict(await self._http.call("GET", "/v1/cluster"))


def _topic_event(data: dict[str, Any]) -> TopicMessage:
    return TopicMessage(offset=int(data.get("offset", 0)), body=decode_body(data),
                        topic=str(data.get("topic", "")), partition=int(data.get("partition", 0)),
                        key=data.get("key"), headers=dict(data.get("headers") or {}),
                        published_at=int(data.get("published_at") or 0))


def max_offset(batch: TopicBatch, offset: int) -> int:
    """Where to read next: the answer's next_offset, never going backwards."""
    if batch.messages:
        return max(batch.next_offset, batch.messages[-1].offset + 1)
    return offset if batch.next_offset < offset else batch.next_offset
