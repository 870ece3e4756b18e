"""The aiohttp application of one node: shared objects, the error edge, the common headers.

Handlers are thin: parse -> validate (storage.validate) -> command -> propose -> answer.
Errors of every kind leave through one place (`error_middleware`) in API.md's shape.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from node import heap_trim
from node.barriers import ReadBarrier
from node.codec import READ_TIMEOUT_KEY, respond
from node.config import ClusterConfig, NodeSpec
from node.waiters import ApplyNotifier
from replication import ProposalError, Replica
from storage.errors import KINDS, BrokerError, is_error
from storage.limits import Limits
from storage.state import BrokerState

log = logging.getLogger("raftmq.node")
T = TypeVar("T")

RETRY_AFTER_S = {429: "1", 503: "1", 504: "1"}
PROPOSE_TIMEOUT_S = 10.0
# a read with no consistency= sees every write acknowledged before it started, from any node;
# `local` (opt-in) answers from this node's applied state without a Raft round trip
READ_CONSISTENCY_DEFAULT = "linearizable"
READ_CONSISTENCY_LEVELS = ("local", "leader", "linearizable")


@dataclass
class NodeContext:
    """Everything a handler needs, hung off the app under one typed key."""

    cluster: ClusterConfig
    node: NodeSpec
    replica: Replica
    limits: Limits
    notifier: ApplyNotifier
    propose_timeout_s: float = PROPOSE_TIMEOUT_S
    data_dir: Path | None = None
    requests_in_flight: int = 0
    rss_bytes: int = 0
    rss_checked_s: float = 0.0
    read_barrier: ReadBarrier | None = None
    connections: Callable[[], tuple[int, int]] | None = None  # (open, refused) for /metrics
    gzip_answer_bytes_min: int = 0  # node limit (node/config.py); 0: answers never gzip'd

    def check_memory(self) -> None:
        """Refuse new messages past memory_high_watermark_bytes; consumers keep working, and
        their acks free the memory that lets publishes in again."""
        now_s = time.monotonic()
        if now_s - self.rss_checked_s > RSS_CHECK_INTERVAL_S:
            self.rss_bytes, self.rss_checked_s = heap_trim.rss_bytes(), now_s
        limit = self.limits.memory_high_watermark_bytes
        if self.rss_bytes > limit:
            raise BrokerError("overloaded", f"node memory {self.rss_bytes} B is above "
                              f"memory_high_watermark_bytes ({limit} B): publishes are refused "
                              "until consumers drain queues")

    async def propose(self, cmd: dict[str, Any], *, timeout_s: float | None = None,
                      memory: bool = False) -> Any:
        """Propose through Raft; an error result raises BrokerError, a failure ProposalError."""
        result = await self.replica.propose(cmd, timeout_s=timeout_s or self.propose_timeout_s,
                                            memory=memory)
        if is_error(result):
            err = result["error"]
            details = {k: v for k, v in err.items() if k not in ("code", "message")}
            raise BrokerError(err["code"], err["message"], **details)
        return result

    async def publish(self, cmd: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
        """Propose a publish with the durability of its queue or topic (`kind`, `name`) as this
        node knows it; the answer says which applied (docs/durability.md): "fsync" = on disk on
        a majority, "memory" = written to the OS on a majority, fdatasync'd right after."""
        durability = self.replica.read(lambda state: state.durability(kind, name))
        result = await self.propose(cmd, memory=durability == "memory")
        return {**result, "durability": durability}

    def read(self, fn: Callable[[BrokerState, int], T]) -> T:
        """Read this node's applied state (local consistency) with the node's clock."""
        now_ms = now_wall_ms()
        return self.replica.read(lambda state: fn(state, now_ms))

    async def read_consistent(self, request: web.Request,
                              fn: Callable[[BrokerState, int], T]) -> T:
        """`linearizable` (default) and `leader` first wait for a no-op through the log (shared
        by concurrent readers: node/barriers.py), so the answer reflects every write committed
        before the read; `local` reads this node's applied state at once."""
        level = request.query.get("consistency", READ_CONSISTENCY_DEFAULT)
        if level not in READ_CONSISTENCY_LEVELS:
            raise BrokerError("invalid_request",
                              "consistency: must be local, leader or linearizable")
        if level != "local":
            if self.read_barrier is None:
                self.read_barrier = ReadBarrier(
                    lambda: self.replica.barrier(timeout_s=self.propose_timeout_s))
            await self.read_barrier.wait()
        return self.read(fn)


CTX = web.AppKey("raftmq_ctx", NodeContext)
RSS_CHECK_INTERVAL_S = 0.1


def now_wall_ms() -> int:
    return int(time.time() * 1000)


def ctx(request: web.Request) -> NodeContext:
    return request.app[CTX]


def error_response(request: web.Request, code: str, message: str,
                   **details: Any) -> web.Response:
    kind = KINDS.get(code) or KINDS["internal_error"]
    body: dict[str, Any] = {"code": code, "message": message, "retryable": kind.retryable}
    body.update(details)
    headers = {}
    if kind.status in RETRY_AFTER_S:
        headers["Retry-After"] = RETRY_AFTER_S[kind.status]
    return respond(request, {"error": body}, status=kind.status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BrokerError as exc:
        return error_response(request, exc.code, exc.message, **exc.details)
    except ProposalError as exc:
        return error_response(request, exc.code, str(exc))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CTX].limits.request_bytes_max
        return error_response(request, "request_too_large",
                              f"request body larger than request_bytes_max ({limit} bytes)")
    except web.HTTPNotFound:
        return error_response(request, "not_found", f"no route for {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(request, "method_not_allowed",
                              f"{request.method} is not allowed here; use {allowed}")
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except ConnectionError:
        if request.transport is not None and not request.transport.is_closing():
            log.exception("event=handler_crash path=%s", request.path)
            return error_response(request, "internal_error", "internal error (logged on the node)")
        # the client went away mid-request (a dropped subscriber, a reset during the body):
        # nobody is left to answer; aiohttp ignores a ConnectionError from a handler
        log.info("event=client_gone path=%s", request.path)
        raise
    except Exception:
        log.exception("event=handler_crash path=%s", request.path)
        return error_response(request, "internal_error", "internal error (logged on the node)")


REQUEST_ID_CHARS_MAX = 128
REQUEST_ID_PREFIX = uuid.uuid4().hex[:8]
REQUEST_IDS = itertools.count(1)


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """requests_in_flight_max per node, and the body read timeout for read_body."""
    context = request.app[CTX]
    if context.requests_in_flight >= context.limits.requests_in_flight_max:
        raise BrokerError("overloaded", f"more than requests_in_flight_max "
                          f"({context.limits.requests_in_flight_max}) requests on this node")
    request[READ_TIMEOUT_KEY] = context.limits.request_read_timeout_s
    context.requests_in_flight += 1
    try:
        return await handler(request)
    finally:
        context.requests_in_flight -= 1


@web.middleware
async def header_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """X-Raftmq-Node / X-Raftmq-Leader / X-Request-Id on every answer, and gzip for large
    answers when the client accepts it. (Gzip'd request bodies are inflated by aiohttp.)"""
    request_id = request.headers.get("X-Request-Id", "")[:REQUEST_ID_CHARS_MAX]
    if not request_id:  # unique per node run; uuid4 per request cost ~2% of a busy leader
        request_id = f"{REQUEST_ID_PREFIX}-{next(REQUEST_IDS):x}"
    response = await handler(request)
    context = request.app[CTX]
    if not response.prepared:
        response.headers["X-Raftmq-Node"] = context.node.id
        response.headers["X-Request-Id"] = request_id
        leader = context.replica.leader_id()
        if leader:
            response.headers["X-Raftmq-Leader"] = leader
        body = getattr(response, "body", None)
        gzip_min = context.gzip_answer_bytes_min
        if (gzip_min and isinstance(body, bytes) and len(body) >= gzip_min
                and "gzip" in request.headers.get("Accept-Encoding", "")):
            response.enable_compression(web.ContentCoding.gzip)
    if response.status >= 500 and request.path != "/readyz":
        log.warning("event=http_error request_id=%s method=%s path=%s status=%s node=%s",
                    request_id, request.method, request.path, response.status, context.node.id)
    return response


def set_stream_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers for streamed (SSE) responses, which are prepared before the middleware sees them."""
    context = request.app[CTX]
    response.headers["X-Raftmq-Node"] = context.node.id
    leader = context.replica.leader_id()
    if leader:
        response.headers["X-Raftmq-Leader"] = leader
