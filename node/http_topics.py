"""Topic, binding, consumer-group, producer and transaction endpoints (API.md "Topics",
"Bindings", "Exactly-once"), and live subscribe over server-sent events."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from node import auth
from node.app import NodeContext, ctx, set_stream_headers
from node.codec import decode_bodies, query_float, query_int, read_body, respond, sse_event
from node.http_queues import publish_command, queue_name, raise_if_error
from storage import bindings as binding_rules
from storage import topics as topic_rules
from storage import validate
from storage.errors import BrokerError

SSE_HEARTBEAT_S = 15.0


def topic_limits(context: NodeContext) -> topic_rules.TopicLimits:
    return topic_rules.TopicLimits.from_limits(context.limits)


def topic_name(request: web.Request) -> str:
    return validate.name(request.match_info["topic"], "topic", ctx(request).limits)


async def put_topic(request: web.Request) -> web.Response:
    name = topic_name(request)
    config = topic_rules.validate_topic_config(await read_body(request),
                                               topic_limits(ctx(request)))
    result = await ctx(request).propose({"op": "topic.create", "topic": name, "config": config})
    return respond(request, {"topic": result["topic"]}, status=201 if result["created"] else 200)


async def list_topics(request: web.Request) -> web.Response:
    found = await ctx(request).read_consistent(request, lambda s, now: s.topics.list_topics())
    return respond(request, {"topics": auth.visible(request, "topic", found)})


async def get_topic(request: web.Request) -> web.Response:
    name = topic_name(request)
    info = await ctx(request).read_consistent(request, lambda s, now: s.topics.topic_info(name))
    raise_if_error(info)
    return respond(request, info)


async def delete_topic(request: web.Request) -> web.Response:
    await ctx(request).propose({"op": "topic.delete", "topic": topic_name(request)})
    return web.Response(status=204)


async def publish_topic(request: web.Request) -> web.Response:
    context = ctx(request)
    name = topic_name(request)
    body = await read_body(request)
    context.check_memory()
    messages = topic_messages(context, body.get("messages"))
    cmd: dict[str, Any] = {"op": "topic.publish", "topic": name, "messages": messages}
    if body.get("producer") is not None:
        cmd["producer"] = validate.producer_ref(body["producer"])
    return respond(request, await context.publish(cmd, "topic", name), status=201)


async def read_partition(request: web.Request) -> web.Response:
    """Replay from an offset (or a time); long-polls up to wait_s when nothing is there yet."""
    context = ctx(request)
    name = topic_name(request)
    q = request.query
    partition = query_int(request.match_info, "p", None, 0, 63)
    offset = query_int(q, "offset", 0, 0, 2**62)
    max_messages = query_int(q, "max", 100, 1, context.limits.batch_messages_max)
    wait_s = query_float(q, "wait_s", 0.0, 0, context.limits.wait_s_max)
    from_time_ms = query_int(q, "from_time", None, 0, 2**62) if "from_time" in q else None
    deadline = time.monotonic() + wait_s

    def read(state: Any, now_ms: int) -> Any:
        return state.topics.read(name, partition, offset, max_messages, from_time_ms)

    seen = context.notifier.fired
    result = await context.read_consistent(request, read)
    while True:
        raise_if_error(result)
        if result["messages"] or time.monotonic() >= deadline:
            return respond(request, result)
        await context.notifier.wait(deadline - time.monotonic(), since=seen)
        seen = context.notifier.fired
        result = context.read(read)


async def commit_offsets(request: web.Request) -> web.Response:
    name = topic_name(request)
    group = validate.name(request.match_info["group"], "group", ctx(request).limits)
    body = await read_body(request)
    offsets = validate_offsets(body.get("offsets"))
    result = await ctx(request).propose(
        {"op": "group.commit", "topic": name, "group": group, "offsets": offsets})
    return respond(request, result)


async def get_offsets(request: web.Request) -> web.Response:
    name = topic_name(request)
    group = validate.name(request.match_info["group"], "group", ctx(request).limits)
    result = await ctx(request).read_consistent(
        request, lambda s, now: s.topics.group_offsets(name, group))
    raise_if_error(result)
    return respond(request, result)


async def create_binding(request: web.Request) -> web.Response:
    name = queue_name(request)
    binding = binding_rules.validate_binding(await read_body(request))
    result = await ctx(request).propose({"op": "binding.create", "queue": name, **binding})
    return respond(request, {"binding": result["binding"]},
                   status=201 if result.get("created", True) else 200)


async def list_bindings(request: web.Request) -> web.Response:
    name = queue_name(request)
    result = await ctx(request).read_consistent(
        request, lambda s, now: s.topics.list_bindings(name))
    return respond(request, {"bindings": result})


async def delete_binding(request: web.Request) -> web.Response:
    name = queue_name(request)
    binding_id = request.match_info["binding"]
    await ctx(request).propose({"op": "binding.delete", "queue": name, "id": binding_id})
    return web.Response(status=204)


async def register_producer(request: web.Request) -> web.Response:
    body = await read_body(request)
    cmd: dict[str, Any] = {"op": "producer.register"}
    if body.get("id") is not None:
        cmd["id"] = validate.name(body["id"], "id", ctx(request).limits)
    result = await ctx(request).propose(cmd)
    return respond(request, result, status=201)


async def transaction(request: web.Request) -> web.Response:
    context = ctx(request)
    body = await read_body(request)
    acks = body.get("ack", [])
    publishes = body.get("publish", [])
    if not isinstance(acks, list) or not isinstance(publishes, list):
        raise BrokerError("invalid_request", "ack and publish: must be lists")
    cmd: dict[str, Any] = {"op": "txn", "ack": [], "publish": []}
    for i, item in enumerate(acks):
        if not isinstance(item, dict):
            raise BrokerError("invalid_request", f"ack[{i}]: must be an object")
        cmd["ack"].append({
            "queue": validate.name(item.get("queue"), f"ack[{i}].queue", context.limits),
            "receipts": validate.receipts_list(item.get("receipts"), context.limits)})
    for i, item in enumerate(publishes):
        cmd["publish"].append(txn_publish(context, item, i))
    if body.get("producer") is not None:
        cmd["producer"] = validate.producer_ref(body["producer"])
    auth.check_txn(request, [a["queue"] for a in cmd["ack"]],
                   [("queue", p["queue"]) if "queue" in p else ("topic", p["topic"])
                    for p in cmd["publish"]])
    result = await context.propose(cmd)
    return respond(request, result, status=200)


def txn_publish(context: Any, item: Any, i: int) -> dict[str, Any]:
    if not isinstance(item, dict) or ("queue" in item) == ("topic" in item):
        raise BrokerError("invalid_request", f"publish[{i}]: give exactly one of queue or topic")
    if "queue" in item:
        part = publish_command(context, {"messages": item.get("messages")})
        part["queue"] = validate.name(item["queue"], f"publish[{i}].queue", context.limits)
        return part
    context.check_memory()
    messages = topic_messages(context, item.get("messages"))
    return {"topic": validate.name(item["topic"], f"publish[{i}].topic", context.limits),
            "messages": messages}


def topic_messages(context: Any, raw: Any) -> list[dict[str, Any]]:
    """Validated topic messages in their wire form (a plain message travels as its body)."""
    messages = topic_rules.validate_topic_messages(decode_bodies(raw), topic_limits(context))
    return [topic_rules.topic_wire_form(m) for m in messages]


async def subscribe(request: web.Request) -> web.StreamResponse:
    """Live subscribe: every message published from now on to a topic matching the pattern."""
    context = ctx(request)
    pattern = request.query.get("topics")
    if not pattern:
        raise BrokerError("invalid_request", "topics: a topic pattern is required")
    binding_rules.validate_pattern(pattern, "topics")
    cursors: dict[tuple[str, int], int] = context.read(
        lambda s, now: high_watermarks(s.topics, pattern))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    set_stream_headers(request, response)
    await response.prepare(request)
    last_beat = time.monotonic()
    while True:
        seen = context.notifier.fired
        events = context.read(lambda s, now: read_new(s.topics, pattern, cursors))
        for event in events:
            cursors[(event["topic"], event["partition"])] = event["offset"] + 1
            await response.write(sse_event("message", event))
        if time.monotonic() - last_beat > SSE_HEARTBEAT_S:
            await response.write(b": heartbeat\n\n")
            last_beat = time.monotonic()
        if request.transport is None or request.transport.is_closing():
            return response
        await context.notifier.wait(SSE_HEARTBEAT_S, since=seen)


SUBSCRIBE_BATCH_MAX = 100


def high_watermarks(topics: Any, pattern: str) -> dict[tuple[str, int], int]:
    """Where a live subscription starts: the end of every partition of every matching topic."""
    out: dict[tuple[str, int], int] = {}
    for name in topics.matching_topics(pattern):
        for part in topics.topic_info(name)["partitions"]:
            out[(name, part["partition"])] = part["high_watermark"]
    return out


def read_new(topics: Any, pattern: str, cursors: dict[tuple[str, int], int]) -> list[Any]:
    """Messages past each cursor, in every matching topic (topics created later start at 0)."""
    events = []
    for name in topics.matching_topics(pattern):
        for part in topics.topic_info(name)["partitions"]:
            p = part["partition"]
            start = cursors.get((name, p), 0)
            if part["high_watermark"] <= start:
                continue
            result = topics.read(name, p, start, SUBSCRIBE_BATCH_MAX)
            for message in result.get("messages", []):
                events.append({"topic": name, "partition": p, **message})
    return events


def validate_offsets(value: Any) -> list[dict[str, int]]:
    if not isinstance(value, list) or not value:
        raise BrokerError("invalid_request", "offsets: a non-empty list is required")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BrokerError("invalid_request", f"offsets[{i}]: must be an object")
        out.append({"partition": validate.count(item.get("partition"), f"offsets[{i}].partition"),
                    "offset": validate.count(item.get("offset"), f"offsets[{i}].offset")})
    return out


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/topics", list_topics)
    r.add_put("/v1/topics/{topic}", put_topic)
    r.add_get("/v1/topics/{topic}", get_topic)
    r.add_delete("/v1/topics/{topic}", delete_topic)
    r.add_post("/v1/topics/{topic}/messages", publish_topic)
    r.add_get("/v1/topics/{topic}/partitions/{p}/messages", read_partition)
    r.add_post("/v1/topics/{topic}/groups/{group}/offsets", commit_offsets)
    r.add_get("/v1/topics/{topic}/groups/{group}/offsets", get_offsets)
    r.add_post("/v1/queues/{queue}/bindings", create_binding)
    r.add_get("/v1/queues/{queue}/bindings", list_bindings)
    r.add_delete("/v1/queues/{queue}/bindings/{binding}", delete_binding)
    r.add_post("/v1/producers", register_producer)
    r.add_post("/v1/transactions", transaction)
    r.add_get("/v1/subscribe", subscribe)
