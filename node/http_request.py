"""Request-reply (API.md "Request-reply") built from queue operations only.

A request creates a temporary reply queue (which also expires on its own if this node dies),
publishes the message with a fresh `correlation_id` and that `reply_to`, long-polls the reply
queue for the matching reply, and deletes the reply queue whatever happens.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from typing import Any

from aiohttp import web

from node.app import NodeContext, ctx
from node.codec import decode_bodies, read_body, respond
from node.http_queues import client_gone, queue_name, receive_wait
from replication import ProposalError
from storage import validate
from storage.errors import BrokerError

REQUEST_TIMEOUT_S_DEFAULT = 10.0
REQUEST_TIMEOUT_S_MAX = 300.0
REPLY_QUEUE_SLACK_S = 60  # the reply queue outlives an abandoned request by this much


async def request_reply(request: web.Request) -> web.Response:
    context = ctx(request)
    name = queue_name(request)
    body = await read_body(request)
    message = body.get("message")
    if not isinstance(message, dict):
        raise BrokerError("invalid_request", "message: an object is required")
    timeout_s = validate.seconds(body.get("timeout_s", REQUEST_TIMEOUT_S_DEFAULT), "timeout_s",
                                 maximum=REQUEST_TIMEOUT_S_MAX)
    correlation_id = message.get("correlation_id") or uuid.uuid4().hex
    reply_queue = f"reply.{context.node.id}.{secrets.token_hex(8)}"
    message = {**message, "correlation_id": correlation_id, "reply_to": reply_queue}
    context.check_memory()
    [msg] = validate.publish_messages(decode_bodies([message]), context.limits)
    config = validate.queue_config({"expires_s": int(timeout_s) + REPLY_QUEUE_SLACK_S},
                                   context.limits, queue=reply_queue)
    await context.propose({"op": "queue.create", "queue": reply_queue, "config": config})
    try:
        await context.propose({"op": "queue.publish", "queue": name, "messages": [msg]})
        reply = await wait_reply(context, request, reply_queue, correlation_id,
                                 time.monotonic() + timeout_s)
    finally:
        with contextlib.suppress(BrokerError, ProposalError):
            await context.propose({"op": "queue.delete", "queue": reply_queue})
    if reply is None:
        raise BrokerError("reply_timeout", f"no reply with correlation_id {correlation_id} "
                          f"within {timeout_s}s", correlation_id=correlation_id)
    return respond(request, {"reply": reply})


async def wait_reply(context: NodeContext, request: web.Request, reply_queue: str,
                     correlation_id: str, deadline: float) -> dict[str, Any] | None:
    cmd = {"op": "queue.receive", "queue": reply_queue, "max_messages": 10,
           "visibility_timeout_s": None, "ack": "auto"}
    while time.monotonic() < deadline and not client_gone(request):
        result = await receive_wait(context, request, cmd, deadline)
        for message in (result or {}).get("messages", []):
            if message.get("correlation_id") == correlation_id:
                message.pop("receipt", None)
                return dict(message)
    return None


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/queues/{queue}/request", request_reply)
