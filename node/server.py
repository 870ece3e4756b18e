"""One node process: the replica, the HTTP API on the node's address, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import weakref
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from node import (
    auth,
    gc_pauses,
    heap_trim,
    http_cluster,
    http_members,
    http_queues,
    http_request,
    http_topics,
    openapi,
    push,
    ui,
)
from node.app import CTX, NodeContext, error_middleware, header_middleware, limits_middleware
from node.config import NODE_LIMIT_DEFAULTS, ClusterConfig, limit_floor, split_addr
from node.waiters import ApplyNotifier
from replication import Replica, ReplicaConfig
from storage.errors import KINDS
from storage.limits import DEFAULT_LIMITS, Limits
from storage.state import BrokerState

log = logging.getLogger("raftmq.node")

SHUTDOWN_GRACE_S = 5.0


def build_app(context: NodeContext, auth_config: auth.AuthConfig | None = None
              ) -> web.Application:
    middlewares = [http_cluster.timing_middleware, header_middleware, error_middleware,
                   limits_middleware]
    if auth_config is not None:
        middlewares.append(auth.auth_middleware)
    app = web.Application(client_max_size=context.limits.request_bytes_max,
                          middlewares=middlewares)
    app[CTX] = context
    if auth_config is not None:
        app[auth.AUTH] = auth_config
    http_cluster.setup_metrics(app, context)
    add_routes(app)
    app.cleanup_ctx.append(push.push_worker_ctx)
    return app


def add_routes(app: web.Application) -> None:
    """Every route of the API (tests/unit/test_openapi.py checks them against the OpenAPI)."""
    http_cluster.setup(app)
    http_members.setup(app)
    http_queues.setup(app)
    http_topics.setup(app)
    http_request.setup(app)
    push.setup(app)
    openapi.setup(app)
    ui.setup(app)


def tls_context(cluster: ClusterConfig) -> ssl.SSLContext | None:
    if cluster.tls_cert_file is None or cluster.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cluster.tls_cert_file, cluster.tls_key_file)
    return context


def limits_from(cluster: ClusterConfig) -> Limits:
    """The cluster's limits; a wrong name, type or range stops the node at start. The node-level
    ones (NODE_LIMIT_DEFAULTS: connections_max) are checked here too, and read with
    cluster.node_limit."""
    fields = Limits.__dataclass_fields__
    known = set(fields) | set(NODE_LIMIT_DEFAULTS)
    unknown = sorted(set(cluster.limits) - known)
    if unknown:
        raise SystemExit(f"[limits] has unknown keys: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    for key, value in cluster.limits.items():
        default = NODE_LIMIT_DEFAULTS.get(key, getattr(DEFAULT_LIMITS, key, None))
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (isinstance(default, int) and not isinstance(value, int)):
            raise SystemExit(f"[limits] {key} must be {type(default).__name__} "
                             f"(like its default {default}), got {value!r}")
        floor = limit_floor(key)
        if value < floor:
            least = "0 (off) or more" if floor == 0 else "greater than 0"
            raise SystemExit(f"[limits] {key} must be {least}, got {value!r}")
    return Limits(**{k: v for k, v in cluster.limits.items() if k in fields})


# -- the HTTP edge below the app: connections and what aiohttp's parser refuses ------------------
# aiohttp's parser answers these statuses itself (before any middleware); same codes as the app.
PARSER_ERROR_CODES = {400: "invalid_request", 408: "request_timeout", 413: "request_too_large"}
PARSER_LIMITS_TEXT = ("request line and each header at most 8190 bytes, at most 128 headers, "
                      "valid HTTP/1.1 framing")


class NodeRequestHandler(RequestHandler):
    """aiohttp's connection handler with API.md's JSON error shape for what its HTTP parser
    refuses (bad request line, oversized headers, bad chunked framing): aiohttp answers those
    in `handle_error` with text/plain and logs a traceback per request."""

    def __init__(self, manager: NodeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._node_server = manager

    def connection_lost(self, exc: BaseException | None) -> None:
        self._node_server.forget(self)
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a response already started
            raise ConnectionError("response already started, cannot send an error")
        if isinstance(exc, ConnectionError) and (self.transport is None
                                                 or self.transport.is_closing()):
            # the client went away (logged by error_middleware as client_gone): no one to
            # answer; aiohttp's connection loop ignores a ConnectionError raised from here
            raise ConnectionError("client gone") from exc
        code = PARSER_ERROR_CODES.get(status, "internal_error")
        kind = KINDS[code]
        if kind.status >= 500:
            log.error("event=http_edge_error status=%s", status, exc_info=exc)
            text = "internal error (logged on the node)"
        else:  # never echo the parser's message: it may quote header bytes (tokens)
            log.info("event=http_request_refused status=%s reason=%s remote=%s",
                     status, type(exc).__name__, request.remote)
            text = f"malformed HTTP request ({type(exc).__name__}): {PARSER_LIMITS_TEXT}"
        body = {"error": {"code": code, "message": text, "retryable": kind.retryable}}
        response = web.Response(status=kind.status, text=json.dumps(body),
                                content_type="application/json",
                                headers={"X-Raftmq-Node": self._node_server.node_id})
        response.force_close()
        return response


class RefusedConnection(asyncio.Protocol):
    """A connection past connections_max: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class NodeServer(web.Server):
    """aiohttp's low-level server (the protocol factory of the site) with connections_max.

    Counted at accept, when aiohttp's own count is not yet updated (a burst of accepts all
    run the factory before any connection_made): the handlers we made and not yet lost, held
    weakly so that a connection that never completed (a failed TLS handshake) drops out."""

    def __init__(self, *args: Any, connections_max: int, node_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert connections_max > 0
        self.connections_max = connections_max
        self.node_id = node_id
        self.connections_refused = 0
        self._open: weakref.WeakSet[NodeRequestHandler] = weakref.WeakSet()

    def __call__(self) -> Any:
        if len(self._open) >= self.connections_max:
            self.connections_refused += 1
            if self.connections_refused <= 10 or self.connections_refused % 1000 == 0:
                log.warning("event=connection_refused limit=connections_max value=%d count=%d",
                            self.connections_max, self.connections_refused)
            return RefusedConnection()
        handler = NodeRequestHandler(self, loop=self._loop, **self._kwargs)
        self._open.add(handler)
        assert len(self._open) <= self.connections_max
        return handler

    def counts(self) -> tuple[int, int]:
        """(open connections, connections refused since start), for /metrics."""
        return len(self._open), self.connections_refused

    def forget(self, handler: NodeRequestHandler) -> None:
        self._open.discard(handler)


class NodeRunner(web.AppRunner):
    """web.AppRunner whose server is a NodeServer."""

    def __init__(self, app: web.Application, *, connections_max: int, node_id: str,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._connections_max = connections_max
        self._node_id = node_id

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return NodeServer(base.request_handler, request_factory=base.request_factory,
                          handler_cancellation=base.handler_cancellation, loop=base._loop,
                          connections_max=self._connections_max, node_id=self._node_id,
                          **base._kwargs)


def restart_for_resync() -> None:
    """Replica `on_resync` (Raft thread): the data dir is marked, so run this node again, same
    command line and pid; start-up sets the diverged state aside (docs/durability.md)."""
    log.critical("event=node_resync_restart node process re-executes itself")
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


async def serve(cluster: ClusterConfig, node_id: str, data_dir: Path,
                auth_config: auth.AuthConfig | None = None) -> None:
    spec = cluster.node(node_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    limits = limits_from(cluster)
    gc_pauses.install()  # before the snapshot load, which may build a million objects
    replica = await Replica.start(
        ReplicaConfig(node_id=spec.id, raft_addr=spec.raft,
                      peers={n.id: n.raft for n in cluster.nodes if n.id != spec.id},
                      data_dir=data_dir, secret=cluster.raft_secret,
                      raft_conf=dict(cluster.raft), on_resync=restart_for_resync),
        state_factory=lambda: BrokerState(limits),
        state_decoder=lambda data: BrokerState.decode_snapshot(data, limits))
    notifier = ApplyNotifier(limits.long_polls_max)
    replica.add_apply_listener(notifier.fire)
    context = NodeContext(cluster=cluster, node=spec, replica=replica, limits=limits,
                          notifier=notifier, data_dir=data_dir,
                          gzip_answer_bytes_min=cluster.node_limit("gzip_answer_bytes_min"))
    runner = NodeRunner(build_app(context, auth_config), access_log=None,
                        shutdown_timeout=SHUTDOWN_GRACE_S,
                        connections_max=cluster.node_limit("connections_max"), node_id=spec.id,
                        keepalive_timeout=cluster.node_limit("idle_connection_timeout_s"))
    await runner.setup()
    assert isinstance(runner.server, NodeServer)
    context.connections = runner.server.counts
    host, port = split_addr(spec.http)
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls_context(cluster))
    await site.start()
    log.info("event=node_started node=%s http=%s raft=%s data_dir=%s auth=%s",
             spec.id, spec.http, spec.raft, data_dir, "on" if auth_config else "off")
    trimmer = asyncio.get_running_loop().create_task(heap_trim.run(replica.is_ready))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("event=node_stopping node=%s", spec.id)
        trimmer.cancel()
        await runner.cleanup()
        await replica.close()


def run(cluster: ClusterConfig, node_id: str, data_dir: Path,
        auth_config: auth.AuthConfig | None = None) -> None:
    asyncio.run(serve(cluster, node_id, data_dir, auth_config))
