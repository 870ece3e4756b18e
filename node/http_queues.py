"""Queue endpoints (API.md "Queues"): validate, build the command, propose, answer."""

from __future__ import annotations

import functools
import time
from typing import Any

from aiohttp import web

from node import auth
from node.app import NodeContext, ctx, set_stream_headers
from node.codec import decode_bodies, query_int, read_body, respond, sse_event
from storage import validate
from storage.errors import BrokerError

SSE_HEARTBEAT_S = 15.0


def queue_name(request: web.Request) -> str:
    return validate.name(request.match_info["queue"], "queue", ctx(request).limits)


async def put_queue(request: web.Request) -> web.Response:
    name = queue_name(request)
    config = validate.queue_config(await read_body(request), ctx(request).limits, queue=name)
    result = await ctx(request).propose({"op": "queue.create", "queue": name, "config": config})
    return respond(request, {"queue": result["queue"]}, status=201 if result["created"] else 200)


async def list_queues(request: web.Request) -> web.Response:
    queues = await ctx(request).read_consistent(request, lambda s, now: s.list_queues(now))
    return respond(request, {"queues": auth.visible(request, "queue", queues)})


async def get_queue(request: web.Request) -> web.Response:
    name = queue_name(request)
    info = await ctx(request).read_consistent(request, lambda s, now: s.queue_info(name, now))
    raise_if_error(info)
    return respond(request, info)


async def delete_queue(request: web.Request) -> web.Response:
    name = queue_name(request)
    await ctx(request).propose({"op": "queue.delete", "queue": name})
    return web.Response(status=204)


async def publish(request: web.Request) -> web.Response:
    context = ctx(request)
    name = queue_name(request)
    body = await read_body(request)
    cmd = publish_command(context, body)
    cmd.update(op="queue.publish", queue=name)
    return respond(request, await context.publish(cmd, "queue", name), status=201)


def publish_command(context: NodeContext, body: dict[str, Any]) -> dict[str, Any]:
    """The validated `messages` (and `producer`, when given) of a publish body."""
    context.check_memory()
    messages = validate.publish_messages_wire(decode_bodies(body.get("messages")),
                                              context.limits)
    cmd: dict[str, Any] = {"messages": messages}
    if body.get("producer") is not None:
        cmd["producer"] = validate.producer_ref(body["producer"])
    return cmd


async def receive(request: web.Request) -> web.Response:
    """Receive now, or long-poll up to `wait_s`: woken by applies on this node, then propose."""
    context = ctx(request)
    name = queue_name(request)
    req = validate.receive_request(await read_body(request), context.limits)
    cmd = {"op": "queue.receive", "queue": name, "max_messages": req["max_messages"],
           "visibility_timeout_s": req["visibility_timeout_s"], "ack": req["ack"]}
    if req["ack_receipts"] is not None:
        cmd["ack_receipts"] = req["ack_receipts"]
    result = await receive_wait(context, request, cmd, time.monotonic() + req["wait_s"])
    if result is None:
        return web.Response(status=499)
    return respond(request, result)


async def receive_wait(context: NodeContext, request: web.Request, cmd: dict[str, Any],
                       deadline: float) -> dict[str, Any] | None:
    """Propose `cmd` (a queue.receive) once something is ready here or the deadline passed.

    Waiting costs nothing but a future: the node's apply notifier wakes it. A client that went
    away before anything was received gets nothing proposed for it (None). `ack_receipts` do
    not wait: the first proposal carries them, and their outcome is in the answer."""
    name = cmd["queue"]
    acked: dict[str, Any] = {}
    while True:
        ready = context.read(lambda s, now: s.ready_count(name, now))
        # ready < 0: unknown here; the leader decides
        if ready != 0 or time.monotonic() >= deadline or "ack_receipts" in cmd:
            if client_gone(request):
                return None
            result: dict[str, Any] = await context.propose(cmd)
            if "ack_receipts" in cmd:
                acked = {"acked": result["acked"], "stale": result["stale"]}
                cmd = {k: v for k, v in cmd.items() if k != "ack_receipts"}
            if result["messages"] or time.monotonic() >= deadline:
                return {**result, **acked}
        if context.notifier.full():
            raise BrokerError("overloaded", "too many long polls in flight; retry later")
        await context.notifier.wait(deadline - time.monotonic())


async def stream(request: web.Request) -> web.StreamResponse:
    """Push delivery as server-sent events: each message with its receipt, at most `prefetch`
    delivered and not yet acked (or released) at a time. Ack as usual with the receipts."""
    context = ctx(request)
    name = queue_name(request)
    prefetch = query_int(request.query, "prefetch", 10, 1, context.limits.receive_max_messages)
    context.read(lambda s, now: s.queues.get(name))  # 404 before the stream starts
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    set_stream_headers(request, response)
    await response.prepare(request)
    outstanding: list[str] = []
    last_write = time.monotonic()
    while not client_gone(request):
        outstanding = context.read(functools.partial(still_in_flight, name=name,
                                                     receipts=outstanding))
        room = prefetch - len(outstanding)
        if room > 0 and context.read(lambda s, now: s.ready_count(name, now)) > 0:
            result = await context.propose({"op": "queue.receive", "queue": name,
                                            "max_messages": room, "visibility_timeout_s": None,
                                            "ack": "manual"})
            for message in result["messages"]:
                outstanding.append(message["receipt"])
                await response.write(sse_event("message", message))
                last_write = time.monotonic()
            if result["messages"]:
                continue
        if time.monotonic() - last_write >= SSE_HEARTBEAT_S:
            await response.write(b": heartbeat\n\n")
            last_write = time.monotonic()
        await context.notifier.wait(SSE_HEARTBEAT_S)
    return response


def still_in_flight(state: Any, now_ms: int, *, name: str, receipts: list[str]) -> list[str]:
    queue = state.queues.queues.get(name)
    if queue is None:
        return []
    return [r for r in receipts if queue.current(r) is not None]


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def ack(request: web.Request) -> web.Response:
    name = queue_name(request)
    body = await read_body(request)
    receipts = validate.receipts_list(body.get("receipts"), ctx(request).limits)
    result = await ctx(request).propose({"op": "queue.ack", "queue": name, "receipts": receipts})
    return respond(request, result)


async def nack(request: web.Request) -> web.Response:
    name = queue_name(request)
    body = await read_body(request)
    receipts = validate.receipts_list(body.get("receipts"), ctx(request).limits)
    delay_s = validate.seconds(body.get("delay_s", 0), "delay_s")
    result = await ctx(request).propose(
        {"op": "queue.nack", "queue": name, "receipts": receipts, "delay_s": delay_s})
    return respond(request, result)


async def visibility(request: web.Request) -> web.Response:
    context = ctx(request)
    name = queue_name(request)
    body = await read_body(request)
    receipts = validate.receipts_list(body.get("receipts"), context.limits)
    if "timeout_s" not in body:
        raise BrokerError("invalid_request", "timeout_s: required")
    timeout_s = validate.seconds(body["timeout_s"], "timeout_s",
                                 maximum=context.limits.visibility_timeout_s_max)
    result = await context.propose({"op": "queue.visibility", "queue": name,
                                    "receipts": receipts, "timeout_s": timeout_s})
    return respond(request, result)


async def purge(request: web.Request) -> web.Response:
    result = await ctx(request).propose({"op": "queue.purge", "queue": queue_name(request)})
    return respond(request, result)


async def redrive(request: web.Request) -> web.Response:
    context = ctx(request)
    name = queue_name(request)
    body = await read_body(request)
    target = validate.name(body.get("to"), "to", context.limits)
    max_messages = validate.count(body.get("max_messages", context.limits.batch_messages_max),
                                  "max_messages", maximum=context.limits.batch_messages_max)
    result = await context.propose({"op": "queue.redrive", "queue": name, "to": target,
                                    "max_messages": max_messages})
    return respond(request, result)


def raise_if_error(result: Any) -> None:
    if isinstance(result, dict) and "error" in result:
        err = result["error"]
        raise BrokerError(err["code"], err["message"])


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/queues", list_queues)
    r.add_put("/v1/queues/{queue}", put_queue)
    r.add_get("/v1/queues/{queue}", get_queue)
    r.add_delete("/v1/queues/{queue}", delete_queue)
    r.add_post("/v1/queues/{queue}/messages", publish)
    r.add_post("/v1/queues/{queue}/receive", receive)
    r.add_post("/v1/queues/{queue}/ack", ack)
    r.add_post("/v1/queues/{queue}/nack", nack)
    r.add_post("/v1/queues/{queue}/visibility", visibility)
    r.add_post("/v1/queues/{queue}/purge", purge)
    r.add_post("/v1/queues/{queue}/redrive", redrive)
    r.add_get("/v1/queues/{queue}/stream", stream)

