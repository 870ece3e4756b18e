"""`raftmq.Client`: the synchronous client.

It runs an `AsyncClient` on a private event loop in one daemon thread, so both clients share
one implementation of the retry, failover and exactly-once rules. It is safe to share between
threads; publishes of one client are serialized (one producer, one request in flight).

    with Client("http://127.0.0.1:8701") as mq:
        mq.create_queue("orders")
        mq.publish("orders", "hello")
        for msg in mq.receive("orders", max_messages=10, wait_s=5):
            mq.ack("orders", msg)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from raftmq.aio import AsyncClient, Receipts, max_offset
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
)

T = TypeVar("T")
CLOSE_TIMEOUT_S = 5.0


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread, aio: AsyncClient) -> None:
    if loop.is_closed():
        return
    if thread.is_alive():
        fut = asyncio.run_coroutine_threadsafe(aio.close(), loop)
        with contextlib.suppress(Exception):  # best effort: the session may already be gone
            fut.result(CLOSE_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_TIMEOUT_S)
    if not thread.is_alive():
        loop.close()


class Transaction:
    """Synchronous consume-transform-produce: commits on leaving the `with` block."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._inner = client._aio.transaction()

    @property
    def result(self) -> Any:
        return self._inner.result

    def ack(self, queue: str, receipts: Receipts) -> None:
        self._inner.ack(queue, receipts)

    def publish(self, queue: str, messages: Messages) -> None:
        self._inner.publish(queue, messages)

    def publish_topic(self, topic: str, messages: Messages,
                      key: str | None = None) -> None:
        self._inner.publish_topic(topic, messages, key)

    def commit(self) -> Any:
        return self._client._run(self._inner.commit())

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()


class Client:
    """A synchronous client for any node(s) of a raftmq cluster; arguments as AsyncClient."""

    def __init__(self, urls: str | list[str] | None = None, *, timeout_s: float = 30.0,
                 retries: int = 10, attempt_timeout_s: float = 5.0, token: str | None = None,
                 exactly_once: bool = True, producer_id: str | None = None,
                 codec: str = "json") -> None:
        self._aio = AsyncClient(urls, timeout_s=timeout_s, retries=retries,
                                attempt_timeout_s=attempt_timeout_s, token=token,
                                exactly_once=exactly_once, producer_id=producer_id, codec=codec)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raftmq-client",
                                        daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread, self._aio)

    @property
    def urls(self) -> list[str]:
        return self._aio.urls

    @property
    def producer(self) -> ProducerRef | None:
        """This client's producer (id, epoch, next seq), once registered."""
        return self._aio.producer

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert threading.current_thread() is not self._thread, "re-entrant call from the loop"
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("the client is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- queues -------------------------------------------------------------------------------

    def create_queue(self, name: str, **config: Any) -> dict[str, Any]:
        return self._run(self._aio.create_queue(name, **config))

    def delete_queue(self, name: str) -> None:
        self._run(self._aio.delete_queue(name))

    def list_queues(self) -> list[dict[str, Any]]:
        return self._run(self._aio.list_queues())

    def queue_info(self, name: str) -> dict[str, Any]:
        return self._run(self._aio.queue_info(name))

    def publish(self, queue: str, messages: Messages) -> PublishResult:
        return self._run(self._aio.publish(queue, messages))

    def receive(self, queue: str, max_messages: int = 1, wait_s: float = 0,
                visibility_timeout_s: float | None = None, ack: str = "manual", *,
                ack_receipts: Receipts | None = None) -> list[Message]:
        return self._run(self._aio.receive(queue, max_messages, wait_s, visibility_timeout_s,
                                           ack, ack_receipts=ack_receipts))

    def messages(self, queue: str, *, wait_s: float = 20, max_messages: int = 10,
                 visibility_timeout_s: float | None = None,
                 ack: str = "manual") -> Iterator[Message]:
        """Receive forever (long polls): `for msg in mq.messages("q"): ...`."""
        while True:
            yield from self.receive(queue, max_messages, wait_s, visibility_timeout_s, ack)

    def ack(self, queue: str, receipts: Receipts) -> AckResult:
        return self._run(self._aio.ack(queue, receipts))

    def nack(self, queue: str, receipts: Receipts, delay_s: float = 0) -> AckResult:
        return self._run(self._aio.nack(queue, receipts, delay_s))

    def change_visibility(self, queue: str, receipts: Receipts,
                          timeout_s: float) -> dict[str, Any]:
        return self._run(self._aio.change_visibility(queue, receipts, timeout_s))

    def purge(self, queue: str) -> int:
        return self._run(self._aio.purge(queue))

    def redrive(self, queue: str, to: str, max_messages: int | None = None) -> int:
        return self._run(self._aio.redrive(queue, to, max_messages))

    def request(self, queue: str, message: MessageSpec, timeout_s: float = 10) -> Message:
        return self._run(self._aio.request(queue, message, timeout_s))

    # -- bindings -----------------------------------------------------------------------------

    def bind(self, queue: str, topic_pattern: str, headers: dict[str, str] | None = None,
             match: str = "all") -> dict[str, Any]:
        return self._run(self._aio.bind(queue, topic_pattern, headers, match))

    def list_bindings(self, queue: str) -> list[dict[str, Any]]:
        return self._run(self._aio.list_bindings(queue))

    def unbind(self, queue: str, binding_id: str) -> None:
        self._run(self._aio.unbind(queue, binding_id))

    # -- topics -------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1,
                     retention: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
        return self._run(self._aio.create_topic(name, partitions, retention, **config))

    def delete_topic(self, name: str) -> None:
        self._run(self._aio.delete_topic(name))

    def list_topics(self) -> list[dict[str, Any]]:
        return self._run(self._aio.list_topics())

    def topic_info(self, name: str) -> dict[str, Any]:
        return self._run(self._aio.topic_info(name))

    def publish_topic(self, topic: str, messages: Messages,
                      key: str | None = None) -> TopicPublishResult:
        return self._run(self._aio.publish_topic(topic, messages, key))

    def read_topic(self, topic: str, partition: int = 0, offset: int = 0, max: int = 100,
                   wait_s: float = 0, from_time: int | None = None,
                   consistency: str | None = None) -> TopicBatch:
        return self._run(self._aio.read_topic(topic, partition, offset, max, wait_s, from_time,
                                              consistency))

    def topic_messages(self, topic: str, partition: int = 0, offset: int = 0, *,
                       wait_s: float = 20, max: int = 100) -> Iterator[TopicMessage]:
        """Read a partition from `offset` forever (long polls)."""
        while True:
            batch = self.read_topic(topic, partition, offset, max, wait_s)
            yield from batch.messages
            offset = max_offset(batch, offset)

    def commit_offsets(self, topic: str, group: str,
                       offsets: dict[int, int] | list[dict[str, int]]) -> dict[str, Any]:
        return self._run(self._aio.commit_offsets(topic, group, offsets))

    def group_offsets(self, topic: str, group: str) -> list[dict[str, Any]]:
        return self._run(self._aio.group_offsets(topic, group))

    def subscribe(self, pattern: str) -> Iterator[TopicMessage]:
        """Live subscribe to topics matching `pattern` (see AsyncClient.subscribe)."""
        return self._iterate(self._aio.subscribe(pattern))

    def stream(self, queue: str, prefetch: int = 10) -> Iterator[Message]:
        """Push delivery from a queue (see AsyncClient.stream); ack each message as usual."""
        return self._iterate(self._aio.stream(queue, prefetch))

    def _iterate(self, agen: AsyncGenerator[T, None]) -> Iterator[T]:
        async def step() -> T:
            return await agen.__anext__()

        try:
            while True:
                try:
                    item = self._run(step())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._loop.is_closed():
                self._run(agen.aclose())

    # -- exactly-once and cluster -------------------------------------------------------------

    def register_producer(self) -> ProducerRef:
        return self._run(self._aio.register_producer())

    def transaction(self) -> Transaction:
        return Transaction(self)

    def commit_transaction(self, acks: list[dict[str, Any]],
                           publishes: list[dict[str, Any]]) -> Any:
        return self._run(self._aio.commit_transaction(acks, publishes))

    def cluster_status(self) -> dict[str, Any]:
        return self._run(self._aio.cluster_status())
