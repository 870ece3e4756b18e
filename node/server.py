"""One node process: the replica, the HTTP API on the node's address, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path

from aiohttp import web

from node import (
    auth,
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
from node.config import ClusterConfig, split_addr
from node.waiters import ApplyNotifier
from replication import Replica, ReplicaConfig
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
    """The cluster's limits; a wrong name, type or range stops the node at start."""
    fields = Limits.__dataclass_fields__
    unknown = sorted(set(cluster.limits) - set(fields))
    if unknown:
        raise SystemExit(f"[limits] has unknown keys: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    for key, value in cluster.limits.items():
        default = getattr(DEFAULT_LIMITS, key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (isinstance(default, int) and not isinstance(value, int)):
            raise SystemExit(f"[limits] {key} must be {type(default).__name__} "
                             f"(like its default {default}), got {value!r}")
        if value <= 0:
            raise SystemExit(f"[limits] {key} must be greater than 0, got {value!r}")
    return Limits(**cluster.limits)


async def serve(cluster: ClusterConfig, node_id: str, data_dir: Path,
                auth_config: auth.AuthConfig | None = None) -> None:
    spec = cluster.node(node_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    limits = limits_from(cluster)
    replica = await Replica.start(
        ReplicaConfig(node_id=spec.id, raft_addr=spec.raft,
                      peers={n.id: n.raft for n in cluster.nodes if n.id != spec.id},
                      data_dir=data_dir, secret=cluster.raft_secret,
                      raft_conf=dict(cluster.raft)),
        state_factory=lambda: BrokerState(limits),
        state_decoder=lambda data: BrokerState.decode_snapshot(data, limits))
    notifier = ApplyNotifier(limits.long_polls_max)
    replica.add_apply_listener(notifier.fire)
    context = NodeContext(cluster=cluster, node=spec, replica=replica, limits=limits,
                          notifier=notifier, data_dir=data_dir)
    runner = web.AppRunner(build_app(context, auth_config), access_log=None,
                           shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    host, port = split_addr(spec.http)
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls_context(cluster))
    await site.start()
    log.info("event=node_started node=%s http=%s raft=%s data_dir=%s auth=%s",
             spec.id, spec.http, spec.raft, data_dir, "on" if auth_config else "off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("event=node_stopping node=%s", spec.id)
        await runner.cleanup()
        await replica.close()


def run(cluster: ClusterConfig, node_id: str, data_dir: Path,
        auth_config: auth.AuthConfig | None = None) -> None:
    asyncio.run(serve(cluster, node_id, data_dir, auth_config))
