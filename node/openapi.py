"""The OpenAPI 3.1 document every node serves at /v1/openapi.json, and /docs rendering it.

One table, ROUTES, describes every route; `tests/unit/test_openapi.py` walks the real router
and fails if a route is missing here (or described here but not served).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

JSON_OBJ: dict[str, Any] = {"type": "object"}
NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$"}
MESSAGE = {
    "type": "object", "required": ["body"],
    "properties": {
        "body": {"type": "string", "description": "text (JSON) or bytes (msgpack)"},
        "body_encoding": {"enum": ["base64"], "description": "JSON only: body is base64"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "delay_s": {"type": "number", "minimum": 0}, "ttl_s": {"type": "number", "minimum": 0},
        "group": {"type": "string"}, "dedup_id": {"type": "string"},
        "correlation_id": {"type": "string"}, "reply_to": {"type": "string"},
    },
}
PRODUCER = {"type": "object", "required": ["id", "epoch", "seq"],
            "properties": {"id": {"type": "string"}, "epoch": {"type": "integer"},
                           "seq": {"type": "integer", "minimum": 0}}}
QUEUE_CONFIG = {"type": "object", "properties": {
    "visibility_timeout_s": {"type": "number", "minimum": 0, "maximum": 43200},
    "max_receives": {"type": "integer", "minimum": 0}, "dead_letter_queue": NAME,
    "message_ttl_s": {"type": "number", "minimum": 0}, "max_length": {"type": "integer"},
    "max_bytes": {"type": "integer"}, "overflow": {"enum": ["reject", "drop_oldest"]},
    "delay_s": {"type": "number", "minimum": 0}, "dedup_window_s": {"type": "number"},
    "expires_s": {"type": "number"}, "durability": {"enum": ["fsync", "memory"]}}}
TOPIC_CONFIG = {"type": "object", "properties": {
    "partitions": {"type": "integer", "minimum": 1, "maximum": 64},
    "retention": {"type": "object", "properties": {
        "max_messages": {"type": "integer"}, "max_bytes": {"type": "integer"},
        "max_age_s": {"type": "integer"}}},
    "durability": {"enum": ["fsync", "memory"]}}}
RECEIPT_LIST: dict[str, Any] = {"receipts": {"type": "array", "items": {"type": "string"}}}
RECEIPTS: dict[str, Any] = {"type": "object", "required": ["receipts"],
                            "properties": RECEIPT_LIST}
ERROR = {"type": "object", "properties": {"error": {"type": "object", "required": [
    "code", "message", "retryable"], "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"}}}}}


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


# (method, path, summary, request body schema or None, success status, query params)
ROUTES: list[tuple[str, str, str, dict[str, Any] | None, int, list[str]]] = [
    ("GET", "/healthz", "200 while the process serves", None, 200, []),
    ("GET", "/readyz", "200 when the node knows a leader and has applied the log", None, 200, []),
    ("GET", "/metrics", "Prometheus metrics (text format)", None, 200, []),
    ("GET", "/v1/openapi.json", "This document", None, 200, []),
    ("GET", "/docs", "This document, rendered", None, 200, []),
    ("GET", "/v1/cluster", "Cluster name, leader, term, indexes, members", None, 200, []),
    ("GET", "/v1/cluster/snapshot", "Download a consistent snapshot of the state (backup; "
     "headers X-Raftmq-Index, X-Raftmq-Term; `raftmq restore` seeds a new cluster)", None, 200,
     ["consistency"]),
    ("POST", "/v1/cluster/members", "Add a voting member (one change at a time, via Raft)",
     obj(id={"type": "string"}, raft={"type": "string", "description": "host:port"},
         http={"type": "string", "description": "host:port"}), 201, []),
    ("DELETE", "/v1/cluster/members/{id}", "Remove a member (the leader hands over first)",
     None, 200, []),
    ("GET", "/ui", "Web console (HTML): cluster, queues, topics, dead-letter redrive", None,
     200, []),
    ("GET", "/ui/{asset}", "Web console files (console.js, console.css)", None, 200, []),
    ("GET", "/v1/queues", "List queues with stats", None, 200, ["consistency"]),
    ("PUT", "/v1/queues/{queue}", "Create a queue (idempotent with the same config)",
     QUEUE_CONFIG, 201, []),
    ("GET", "/v1/queues/{queue}", "Queue info: config, stats, bindings", None, 200,
     ["consistency"]),
    ("DELETE", "/v1/queues/{queue}", "Delete a queue", None, 204, []),
    ("POST", "/v1/queues/{queue}/messages", "Publish a batch, atomically",
     obj(messages={"type": "array", "items": MESSAGE}, producer=PRODUCER), 201, []),
    ("POST", "/v1/queues/{queue}/receive", "Receive up to max_messages (long poll wait_s)",
     obj(max_messages={"type": "integer", "minimum": 1, "maximum": 1000},
         wait_s={"type": "number", "minimum": 0, "maximum": 20},
         visibility_timeout_s={"type": "number"}, ack={"enum": ["manual", "auto"]},
         ack_receipts=RECEIPT_LIST["receipts"]), 200, []),
    ("POST", "/v1/queues/{queue}/ack", "Ack deliveries by receipt", RECEIPTS, 200, []),
    ("POST", "/v1/queues/{queue}/nack", "Make deliveries ready again after delay_s",
     {**RECEIPTS, "properties": {**RECEIPT_LIST, "delay_s": {"type": "number"}}},
     200, []),
    ("POST", "/v1/queues/{queue}/visibility", "Change the in-flight time of deliveries",
     {**RECEIPTS, "properties": {**RECEIPT_LIST, "timeout_s": {"type": "number"}}},
     200, []),
    ("POST", "/v1/queues/{queue}/purge", "Remove every ready message", None, 200, []),
    ("POST", "/v1/queues/{queue}/redrive", "Move messages to another queue",
     obj(to=NAME, max_messages={"type": "integer"}), 200, []),
    ("GET", "/v1/queues/{queue}/stream", "Push delivery as server-sent events", None, 200,
     ["prefetch"]),
    ("PUT", "/v1/queues/{queue}/push", "Webhook push: the leader POSTs each message to url",
     obj(url={"type": "string"}, max_in_flight={"type": "integer", "minimum": 1}), 200, []),
    ("DELETE", "/v1/queues/{queue}/push", "Stop webhook push", None, 204, []),
    ("POST", "/v1/queues/{queue}/request", "Request-reply: publish and wait for the reply",
     obj(message=MESSAGE, timeout_s={"type": "number"}), 200, []),
    ("POST", "/v1/queues/{queue}/bindings", "Route matching topic messages into the queue",
     obj(topic={"type": "string"}, headers={"type": "object"}, match={"enum": ["all", "any"]}),
     201, []),
    ("GET", "/v1/queues/{queue}/bindings", "List the queue's bindings", None, 200, []),
    ("DELETE", "/v1/queues/{queue}/bindings/{binding}", "Delete a binding", None, 204, []),
    ("GET", "/v1/topics", "List topics", None, 200, ["consistency"]),
    ("PUT", "/v1/topics/{topic}", "Create a topic", TOPIC_CONFIG, 201, []),
    ("GET", "/v1/topics/{topic}", "Topic info with per-partition watermarks", None, 200,
     ["consistency"]),
    ("DELETE", "/v1/topics/{topic}", "Delete a topic", None, 204, []),
    ("POST", "/v1/topics/{topic}/messages", "Publish to a topic (partition by key)",
     obj(messages={"type": "array", "items": obj(body={"type": "string"},
                                                  key={"type": "string"},
                                                  headers={"type": "object"})},
         producer=PRODUCER), 201, []),
    ("GET", "/v1/topics/{topic}/partitions/{p}/messages", "Replay a partition", None, 200,
     ["offset", "max", "wait_s", "from_time", "consistency"]),
    ("POST", "/v1/topics/{topic}/groups/{group}/offsets", "Commit consumer-group offsets",
     obj(offsets={"type": "array", "items": obj(partition={"type": "integer"},
                                                 offset={"type": "integer"})}), 200, []),
    ("GET", "/v1/topics/{topic}/groups/{group}/offsets", "Committed offsets and lag", None, 200,
     ["consistency"]),
    ("GET", "/v1/subscribe", "Live subscribe (server-sent events)", None, 200, ["topics"]),
    ("POST", "/v1/producers", "Register a producer (or fence the old epoch)",
     obj(id={"type": "string"}), 201, []),
    ("POST", "/v1/transactions", "Ack and publish atomically",
     obj(ack={"type": "array"}, publish={"type": "array"}, producer=PRODUCER), 200, []),
]


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, body, status, query in ROUTES:
        op: dict[str, Any] = {"summary": summary, "responses": {
            str(status): {"description": "success",
                          "content": {"application/json": {"schema": JSON_OBJ}}},
            "default": {"description": "error (API.md shape)",
                        "content": {"application/json": {"schema": ERROR}}}}}
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in _path_params(path)]
        params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
                   for q in query]
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {"required": False, "content": {
                "application/json": {"schema": body}, "application/msgpack": {"schema": body}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {"openapi": "3.1.0",
            "info": {"title": "raftmq", "version": "1",
                     "description": "Clustered message broker; every node serves this API."},
            "paths": paths}


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())


DOCS_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>raftmq API</title>
<style>body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
code{background:#f3f3f3;padding:1px 4px}.m{display:inline-block;width:4.5em;font-weight:bold}
li{margin:.3em 0}</style></head><body><h1>raftmq HTTP API</h1>
<p>Machine-readable: <a href="/v1/openapi.json">/v1/openapi.json</a>.</p><ul>%s</ul></body></html>
"""


async def docs_html(request: web.Request) -> web.Response:
    items = []
    for method, path, summary, _body, status, query in ROUTES:
        q = f" <small>?{'&amp;'.join(query)}</small>" if query else ""
        items.append(f"<li><span class=m>{method}</span><code>{path}</code>{q} "
                     f"&mdash; {summary} <small>({status})</small></li>")
    return web.Response(text=DOCS_HTML % "\n".join(items), content_type="text/html")


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/docs", docs_html)

