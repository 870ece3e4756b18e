"""Cluster, health and metrics endpoints (API.md "Cluster and operations")."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node import gc_pauses, heap_trim, http_members
from node.app import Handler, NodeContext, ctx, set_stream_headers
from node.codec import respond
from replication.hardening import JOURNAL_FILE_NAME, durability_stats
from replication.patches import journal_for
from replication.replica import EXPORT_LENGTH, SnapshotExport
from storage.errors import BrokerError

log = logging.getLogger("raftmq.node")
REGISTRY = web.AppKey("raftmq_registry", CollectorRegistry)
HTTP_DURATION = web.AppKey("raftmq_http_duration", Histogram)


async def get_cluster(request: web.Request) -> web.Response:
    context = ctx(request)
    status = context.replica.status()
    members = http_members.member_rows(request, status) or []
    for spec in context.cluster.nodes if not members else ():
        member = status.member(spec.id)
        members.append({"id": spec.id, "raft": spec.raft, "http": spec.http,
                        "role": member.role if member else "unknown",
                        "reachable": member.reachable if member else False})
    return respond(request, {
        "cluster": context.cluster.name, "node": context.node.id, "leader": status.leader_id,
        "term": status.term, "commit_index": status.commit_index,
        "applied_index": status.applied_index, "role": status.role, "members": members,
    })


SNAPSHOT_CHUNK_BYTES = 1 << 20  # read from the export pipe and written to the client per step
SNAPSHOT_CONTENT_TYPE = "application/vnd.raftmq.snapshot"
SNAPSHOT_DOWNLOAD_S_MAX = 900.0  # encode + transfer; past it the download is cut off


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    """GET /v1/cluster/snapshot: this node's state as of one applied index, in the storage
    snapshot format (magic, version, crc32); `raftmq restore` seeds a new cluster from it.
    `?consistency=linearizable` first puts a no-op through the log (then the snapshot holds
    every write acknowledged before the request)."""
    context = ctx(request)
    level = request.query.get("consistency", "local")
    if level not in ("local", "leader", "linearizable"):
        raise BrokerError("invalid_request", "consistency: must be local, leader or linearizable")
    if level != "local":
        await context.replica.barrier(timeout_s=context.propose_timeout_s)
    export = context.replica.export_snapshot()
    try:
        async with asyncio.timeout(SNAPSHOT_DOWNLOAD_S_MAX):
            return await _stream_export(request, context, export)
    except TimeoutError:  # a client that stops reading must not hold the one export slot
        log.warning("event=snapshot_download_timeout index=%d limit_s=%s",
                    export.applied_index, SNAPSHOT_DOWNLOAD_S_MAX)
        if request.transport is not None:
            request.transport.close()
        raise BrokerError("request_timeout", f"the snapshot download took longer than "
                          f"SNAPSHOT_DOWNLOAD_S_MAX ({SNAPSHOT_DOWNLOAD_S_MAX} s)") from None
    finally:
        await context.replica.finish_export(export)


async def _read(fd: int, size: int) -> bytes:
    return await asyncio.to_thread(os.read, fd, size)


async def _read_exact(fd: int, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = await _read(fd, min(size - len(out), SNAPSHOT_CHUNK_BYTES))
        if not chunk:
            break
        out += chunk
    return out


async def _stream_export(request: web.Request, context: NodeContext,
                         export: SnapshotExport) -> web.StreamResponse:
    head = await _read_exact(export.fd, EXPORT_LENGTH.size)
    if len(head) != EXPORT_LENGTH.size:
        raise BrokerError("internal_error", "the snapshot could not be encoded (see node log)")
    (length,) = EXPORT_LENGTH.unpack(head)
    name = f"raftmq-{context.cluster.name}-{export.applied_index}.snapshot"
    response = web.StreamResponse(headers={
        "Content-Type": SNAPSHOT_CONTENT_TYPE, "Content-Length": str(length),
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Raftmq-Index": str(export.applied_index), "X-Raftmq-Term": str(export.term)})
    set_stream_headers(request, response)
    await response.prepare(request)
    sent = 0
    try:
        while sent < length:
            chunk = await _read(export.fd, min(SNAPSHOT_CHUNK_BYTES, length - sent))
            if not chunk:
                break
            await response.write(chunk)
            sent += len(chunk)
    except ConnectionError:  # the client went away: the finally of the caller reaps the child
        log.info("event=snapshot_download_aborted index=%d sent=%d", export.applied_index, sent)
        return response
    if sent < length:  # the child died: cut the connection, Content-Length shows it is short
        log.warning("event=snapshot_export_failed index=%d sent=%d of %d",
                    export.applied_index, sent, length)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    log.info("event=snapshot_downloaded index=%d term=%d bytes=%d", export.applied_index,
             export.term, length)
    return response


async def healthz(request: web.Request) -> web.Response:
    return respond(request, {"status": "ok", "node": ctx(request).node.id})


async def readyz(request: web.Request) -> web.Response:
    context = ctx(request)
    status = context.replica.status()
    ready = context.replica.is_ready()
    body = {"ready": ready, "node": context.node.id, "leader": status.leader_id,
            "applied_index": status.applied_index, "commit_index": status.commit_index}
    return respond(request, body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[REGISTRY])
    return web.Response(body=data, content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


class BrokerCollector(Collector):
    """Reads the replica's state at scrape time; nothing is counted on the hot path."""

    def __init__(self, context: NodeContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        context = self.context
        now_ms = int(time.time() * 1000)
        queues: list[dict[str, Any]] = context.replica.read(lambda s: s.list_queues(now_ms))
        depth = GaugeMetricFamily("raftmq_queue_messages", "Messages in a queue by state",
                                  labels=["queue", "state"])
        published = GaugeMetricFamily("raftmq_queue_published_total",
                                      "Messages published to a queue", labels=["queue"])
        acked = GaugeMetricFamily("raftmq_queue_acked_total", "Messages acked", labels=["queue"])
        dead = GaugeMetricFamily("raftmq_queue_dead_lettered_total",
                                 "Messages moved to the dead-letter queue", labels=["queue"])
        oldest = GaugeMetricFamily("raftmq_queue_oldest_ready_age_seconds",
                                   "Age of the oldest ready message", labels=["queue"])
        counters = {key: GaugeMetricFamily(metric, doc, labels=["queue"])
                    for metric, key, doc in QUEUE_COUNTERS}
        for info in queues:
            name, stats = info["name"], info["stats"]
            for state in ("ready", "in_flight", "delayed"):
                depth.add_metric([name, state], stats.get(state, 0))
            published.add_metric([name], stats.get("published_total", 0))
            acked.add_metric([name], stats.get("acked_total", 0))
            dead.add_metric([name], stats.get("dead_lettered_total", 0))
            oldest.add_metric([name], stats.get("oldest_ready_age_s") or 0)
            for key, family in counters.items():
                family.add_metric([name], stats.get(key, 0))
        yield from (depth, published, acked, dead, oldest, *counters.values())
        yield GaugeMetricFamily("raftmq_producers", "Registered exactly-once producers",
                                value=context.replica.read(lambda s: s.stats()["producers"]))
        yield GaugeMetricFamily("raftmq_long_polls_waiting",
                                "Long polls waiting for a message on this node",
                                value=self.context.notifier.waiters)
        if context.connections is not None:
            open_now, refused = context.connections()
            yield GaugeMetricFamily("raftmq_http_connections", "Open HTTP connections",
                                    value=open_now)
            yield GaugeMetricFamily("raftmq_http_connections_refused_total",
                                    "HTTP connections closed at accept (connections_max)",
                                    value=refused)
        yield from self._topic_lag()
        yield from self._topic_watermarks()
        yield from self._raft()
        yield from self._durability()

    def _topic_lag(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily("raftmq_topic_group_lag", "Consumer-group lag per partition",
                                labels=["topic", "group", "partition"])
        rows = self.context.replica.read(group_lag_rows)
        for topic, group, partition, value in rows:
            lag.add_metric([topic, group, str(partition)], value)
        yield lag

    def _topic_watermarks(self) -> Iterator[Metric]:
        high = GaugeMetricFamily("raftmq_topic_high_watermark", "Next offset of a partition",
                                 labels=["topic", "partition"])
        low = GaugeMetricFamily("raftmq_topic_low_watermark",
                                "Oldest offset still kept by retention",
                                labels=["topic", "partition"])
        for info in self.context.replica.read(lambda s: s.topics.list_topics()):
            for part in info["partitions"]:
                labels = [info["name"], str(part["partition"])]
                high.add_metric(labels, part["high_watermark"])
                low.add_metric(labels, part["low_watermark"])
        yield from (high, low)

    def _durability(self) -> Iterator[Metric]:
        if self.context.data_dir is None:
            return
        try:
            stats = durability_stats(self.context.data_dir)
        except (KeyError, OSError):  # not built yet, or a test double
            return
        for name, key, doc in DURABILITY_METRICS:
            yield GaugeMetricFamily(name, doc, value=float(stats.get(key) or 0))

    def _raft(self) -> Iterator[Metric]:
        status = self.context.replica.status()
        barrier = self.context.read_barrier
        role = GaugeMetricFamily("raftmq_raft_role", "1 for this node's current Raft role",
                                 labels=["role"])
        for name in ("leader", "follower", "candidate"):
            role.add_metric([name], 1 if status.role == name else 0)
        yield role
        for name, doc, value in (
            ("raftmq_raft_term", "Current Raft term", status.term),
            ("raftmq_raft_commit_index", "Raft commit index", status.commit_index),
            ("raftmq_raft_applied_index", "Last applied Raft index", status.applied_index),
            ("raftmq_raft_is_leader", "1 if this node is the leader",
             1 if status.role == "leader" else 0),
            ("raftmq_raft_elections_started_total", "Elections this node started (as candidate)",
             self.context.replica.stats().get("elections_started", 0)),
            ("raftmq_gc_freezes_total", "Slow full garbage collections whose survivors were "
             "frozen (node/gc_pauses.py)", gc_pauses.stats().freezes),
            ("raftmq_heap_trims_total", "Free C heap returned to the OS (malloc_trim; "
             "node/heap_trim.py)", heap_trim.stats().trims),
            ("raftmq_heap_trim_seconds_total", "Time spent in those trims",
             heap_trim.stats().seconds_total),
            ("raftmq_gc_frozen_objects", "Objects in the permanent GC generation (not walked by "
             "full collections)", gc.get_freeze_count()),
            ("raftmq_raft_elections_averted_total",
             "Expired election timers whose leader append was already waiting unread (a stall "
             "of this node, not of the leader)",
             self.context.replica.stats().get("elections_averted", 0)),
            ("raftmq_raft_commit_notifies_deferred_total",
             "Leader: commits whose index rode on the next append_entries (within "
             "commit_notify_delay_ms) instead of a send of their own",
             self.context.replica.stats().get("commit_notifies_deferred", 0)),
            ("raftmq_raft_commit_notifies_immediate_total",
             "Leader: commits sent to followers at once because one waits on an entry it "
             "forwarded", self.context.replica.stats().get("commit_notifies_immediate", 0)),
            ("raftmq_reads_linearizable_total", "Reads that waited for a Raft barrier",
             barrier.waits if barrier else 0),
            ("raftmq_read_barriers_total", "No-ops proposed for reads (shared by concurrent reads)",
             barrier.proposed if barrier else 0),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


QUEUE_COUNTERS = (  # (metric, key in the queue's stats, help)
    ("raftmq_queue_delivered_total", "delivered_total", "Deliveries of messages of a queue"),
    ("raftmq_queue_nacked_total", "nacked_total", "Messages nacked back to ready"),
    ("raftmq_queue_expired_total", "expired_total", "Messages expired by TTL"),
    ("raftmq_queue_dropped_total", "dropped_total",
     "Messages dropped (overflow drop_oldest, no dead-letter queue)"),
    ("raftmq_queue_purged_total", "purged_total", "Messages removed by purge"),
)
DURABILITY_METRICS = (
    ("raftmq_journal_fsyncs_total", "syncs", "fdatasync calls of the Raft journal"),
    ("raftmq_journal_fsync_seconds_total", "sync_s_total",
     "Time in journal write + fdatasync (divide by fsyncs for the mean)"),
    ("raftmq_journal_fsync_seconds_max", "sync_s_max", "Slowest journal write + fdatasync"),
    ("raftmq_journal_background_fsyncs_total", "background_syncs",
     "fdatasync calls of the journal's syncer thread (durability memory: nobody waits)"),
    ("raftmq_raft_acks_before_fsync_total", "acks_before_sync",
     "Follower acks sent before fdatasync (every unsynced entry was durability memory)"),
    ("raftmq_node_resyncs_total", "resyncs",
     "Times this node found committed entries the cluster had lost, set its state aside and "
     "caught up from the leader (docs/durability.md)"),
    ("raftmq_journal_bytes_written_total", "bytes_written", "Bytes appended to the journal"),
    ("raftmq_journal_payload_bytes", "payload_bytes", "Bytes of entries held in the journal"),
    ("raftmq_journal_payload_bytes_in_memory", "payload_bytes_in_memory",
     "Of those, bytes also kept in memory (the newest; older ones are read from the file)"),
    ("raftmq_journal_payload_reads_total", "payload_reads",
     "Journal entries read back from the file (a lagging follower, a restart's catch-up)"),
    ("raftmq_journal_resends_absorbed_total", "entries_absorbed",
     "Re-sent entries the follower already had (no write, no fsync)"),
    ("raftmq_snapshots_total", "snapshots_ok", "Snapshots written"),
    ("raftmq_snapshots_failed_total", "snapshots_failed", "Snapshots that failed"),
    ("raftmq_snapshot_last_duration_seconds", "snapshot_last_duration_s",
     "Duration of the last snapshot (forked child)"),
    ("raftmq_raft_frames_rejected_total", "frames_rejected",
     "Raft frames refused (bad MAC: not from this cluster)"),
)


def group_lag_rows(state: Any) -> list[tuple[str, str, int, int]]:
    rows = []
    for info in state.topics.list_topics():
        for group in info.get("groups", []):
            offsets = state.topics.group_offsets(info["name"], group)
            for part in offsets.get("partitions", []):
                rows.append((info["name"], group, part["partition"], part["lag"]))
    return rows


@web.middleware
async def timing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        route = request.match_info.route.resource
        label = route.canonical if route is not None else "unmatched"
        request.app[HTTP_DURATION].labels(label, request.method, str(status)).observe(
            time.perf_counter() - start)


# 0.1 ms (a write cache) .. 1 s (a disk in trouble); fsync latency is in every write's latency.
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0)


def observe_fsyncs(context: NodeContext, registry: CollectorRegistry) -> Histogram | None:
    """raftmq_journal_fsync_seconds: every fdatasync of this node's Raft journal (observed on
    the Raft thread through the journal's hook; prometheus-client histograms are thread-safe)."""
    if context.data_dir is None:
        return None
    try:
        journal = journal_for(str((context.data_dir / JOURNAL_FILE_NAME).resolve()))
    except AssertionError:  # no hardened journal here (a test double)
        return None
    histogram = Histogram(
        "raftmq_journal_fsync_seconds", "Raft journal fdatasync latency",
        registry=registry, buckets=FSYNC_BUCKETS_S)
    journal.on_fdatasync = histogram.observe
    return histogram


def setup_metrics(app: web.Application, context: NodeContext) -> None:
    registry = CollectorRegistry()
    registry.register(BrokerCollector(context))
    app[REGISTRY] = registry
    observe_fsyncs(context, registry)
    full_gc = Histogram(
        "raftmq_gc_full_collection_seconds", "Full (generation 2) garbage collections: the whole "
        "process, Raft thread included, waits for each", registry=registry,
        buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
    gc_pauses.stats().observers[:] = [full_gc.observe]
    app[HTTP_DURATION] = Histogram(
        "raftmq_http_request_duration_seconds", "HTTP request latency",
        ["route", "method", "status"], registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25))


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/cluster", get_cluster)
    r.add_get("/v1/cluster/snapshot", get_snapshot)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
