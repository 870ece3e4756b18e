"""Webhook push delivery (API.md: `PUT /v1/queues/{queue}/push {"url", "max_in_flight"}`).

The subscription itself is replicated state (`queue.push_set` / `queue.push_delete`), so every
node knows it; only the current leader delivers. Delivery is ordinary queue work: receive with a
lease, POST the message to the URL, ack on 2xx, nack with exponential backoff otherwise. If the
leader dies mid-delivery the lease expires and the next leader delivers again: at-least-once,
nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from aiohttp import web

from node.app import NodeContext, ctx
from node.codec import dump_json, read_body, respond
from node.http_queues import queue_name
from replication import ProposalError
from storage import validate
from storage.errors import BrokerError

log = logging.getLogger("raftmq.push")

PUSH_TIMEOUT_S = 10.0           # one POST to the subscriber
PUSH_IN_FLIGHT_MAX = 1000       # the largest max_in_flight a subscription may ask for
PUSH_BACKOFF_S_MAX = 60         # nack delay after repeated failures: 1, 2, 4, ... 60 s
PUSH_URL_CHARS_MAX = 2048
SUPERVISE_INTERVAL_S = 1.0


async def put_push(request: web.Request) -> web.Response:
    name = queue_name(request)
    body = await read_body(request)
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise BrokerError("invalid_request", "url: an http:// or https:// URL is required")
    if len(url) > PUSH_URL_CHARS_MAX:
        raise BrokerError("invalid_request", f"url: longer than {PUSH_URL_CHARS_MAX} characters")
    max_in_flight = validate.count(body.get("max_in_flight", 10), "max_in_flight", minimum=1,
                                   maximum=PUSH_IN_FLIGHT_MAX)
    result = await ctx(request).propose({"op": "queue.push_set", "queue": name, "url": url,
                                         "max_in_flight": max_in_flight})
    return respond(request, result)


async def delete_push(request: web.Request) -> web.Response:
    await ctx(request).propose({"op": "queue.push_delete", "queue": queue_name(request)})
    return web.Response(status=204)


class PushWorker:
    """Runs on every node; delivers only while this node is the leader."""

    def __init__(self, context: NodeContext) -> None:
        self.context = context
        self.deliverers: dict[str, tuple[dict[str, Any], asyncio.Task[None]]] = {}
        self.session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT_S))
        try:
            while True:
                self.supervise()
                await self.context.notifier.wait(SUPERVISE_INTERVAL_S, counted=False)
        finally:
            for _, task in self.deliverers.values():
                task.cancel()
            await self.session.close()

    def supervise(self) -> None:
        leading = self.context.replica.status().role == "leader"
        subs: dict[str, dict[str, Any]] = (
            self.context.read(lambda s, now: s.push_subscriptions()) if leading else {})
        for queue in list(self.deliverers):
            config, task = self.deliverers[queue]
            if subs.get(queue) != config or task.done():
                task.cancel()
                del self.deliverers[queue]
        for queue, config in subs.items():
            if queue not in self.deliverers:
                task = asyncio.get_running_loop().create_task(self.deliver(queue, config))
                self.deliverers[queue] = (config, task)

    async def deliver(self, queue: str, config: dict[str, Any]) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                room = config["max_in_flight"] - len(in_flight)
                ready = self.context.read(lambda s, now: s.ready_count(queue, now))
                if room > 0 and ready > 0:
                    result = await self.context.propose({
                        "op": "queue.receive", "queue": queue, "max_messages": room,
                        "visibility_timeout_s": None, "ack": "manual"})
                    for message in result["messages"]:
                        task = asyncio.get_running_loop().create_task(
                            self.post(queue, config["url"], message))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    if result["messages"]:
                        continue
                await self.context.notifier.wait(SUPERVISE_INTERVAL_S, counted=False)
        except (BrokerError, ProposalError) as exc:
            log.info("event=push_paused queue=%s reason=%s", queue, exc)
        finally:
            for task in in_flight:
                task.cancel()

    async def post(self, queue: str, url: str, message: dict[str, Any]) -> None:
        assert self.session is not None
        receipt = message["receipt"]
        ok = False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with self.session.post(
                    url, data=dump_json(message),
                    headers={"Content-Type": "application/json", "X-Raftmq-Queue": queue,
                             "X-Raftmq-Message-Id": str(message["id"])}) as resp:
                ok = 200 <= resp.status < 300
        delay_s = min(2 ** max(0, message["receive_count"] - 1), PUSH_BACKOFF_S_MAX)
        cmd = ({"op": "queue.ack", "queue": queue, "receipts": [receipt]} if ok else
               {"op": "queue.nack", "queue": queue, "receipts": [receipt], "delay_s": delay_s})
        with contextlib.suppress(BrokerError, ProposalError):
            await self.context.propose(cmd)


PUSH_WORKER = web.AppKey("raftmq_push_worker", asyncio.Task[None])


async def push_worker_ctx(app: web.Application) -> Any:
    from node.app import CTX

    task = asyncio.get_running_loop().create_task(PushWorker(app[CTX]).run())
    app[PUSH_WORKER] = task
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup(app: web.Application) -> None:
    app.router.add_put("/v1/queues/{queue}/push", put_push)
    app.router.add_delete("/v1/queues/{queue}/push", delete_push)
