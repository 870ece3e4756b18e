"""`raftmq bench`: load generator and measurements for a raftmq cluster, over HTTP only.

In the spirit of `nats bench`. Workloads:

  publish        POST batches of `--batch` messages to one queue
  receive        pre-fill a queue, then receive `--batch` at a time and ack each batch
  e2e            producers and consumers at once (long-poll receive + ack)
  topic-publish  POST batches to one topic
  topic-read     pre-fill a topic, then replay it from offset 0, `--batch` per request
  latency        one publish of one message at a time
  failover       kill -9 the leader, time to the first acknowledged publish (bench_ops.py)
  restart        RSS holding --count messages, kill -9 a follower, time until it is ready

Without `--url` it starts its own local cluster (`raftmq cluster up` in a temp dir), waits
for /readyz on every node, and stops it by PID at the end. Numbers: msg/s, MB/s (message
bodies), per-request latency p50/p90/p99/max, CPU seconds per message of the node processes
(from /proc/<pid>/stat; with `--url` only when `--pids` names them) and of this client.
The client is cheap on purpose: aiohttp with keep-alive, request bodies built before the
clock starts, MessagePack when the server answers it (else JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import msgpack

WORKLOADS = ("publish", "receive", "e2e", "topic-publish", "topic-read", "latency",
             "failover", "restart")
OPS_WORKLOADS = ("failover", "restart")  # raftmq/bench_ops.py: they kill and start nodes

# Limits: each has a name, a default and a clear error (exit status 2).
BATCH_MAX = 1000                 # API.md: 1,000 messages per batch
CONCURRENCY_MAX = 1024           # connections (requests in flight) per workload
SIZE_BYTES_MAX = 1024 * 1024     # API.md: message body 1 MiB
COUNT_MAX = 100_000_000
DURATION_S_MAX = 24 * 3600.0
ERRORS_MAX = 1000                # a run stops once this many requests failed
BODY_VARIANTS = 8                # distinct pre-built request bodies per workload
READY_TIMEOUT_S = 60.0           # local cluster: all nodes ready within this
DRAIN_TIMEOUT_S = 60.0           # e2e/receive: consumers give up this long after producers
REQUEST_TIMEOUT_S = 30.0
RETRIES_MAX = 20                 # attempts after a retryable answer (429/503), per request
RETRY_SLEEP_S_MAX = 0.5          # back-off after a retryable (429/503) answer or a lost connection
PROGRESS_INTERVAL_S = 1.0
PREFILL_DEFAULT = 100_000        # receive/topic-read with --duration: messages put in first
PREFILL_CONCURRENCY = 8
E2E_WAIT_S = 1.0                 # e2e consumers long-poll this long
CLK_TCK = os.sysconf("SC_CLK_TCK")
JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"


class BenchError(Exception):
    """A set-up or usage problem: printed, exit status 1 (2 for bad arguments)."""


# --------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Spec:
    """One benchmark run."""

    workload: str
    batch: int
    concurrency: int
    count: int | None           # messages (None: run for duration_s)
    duration_s: float | None
    size_bytes: int = 256
    consumers: int = 0          # e2e: consumer connections (0: same as concurrency)
    partitions: int = 1         # topic workloads
    durability: str | None = None  # queue/topic config; None: the server's default (fsync)
    prefill: int = 0            # receive/topic-read with duration_s: messages put in first
    consistency: str | None = None  # topic-read: consistency= of each read (None: the default)
    ack_next: bool = False      # receive/e2e: ack a batch in the next receive (ack_receipts)
    label: str = ""

    def name(self) -> str:
        suffix = (" ack-next" if self.ack_next else "") + (
            " memory" if self.durability == "memory" else "")
        return self.label or f"{self.workload} b{self.batch} c{self.concurrency}{suffix}"


def standard_set(size_bytes: int, count: int | None, duration_s: float | None) -> list[Spec]:
    """The standard set (`make bench`). Counts are sized for ~5-15 s each on 2 cores."""
    def spec(workload: str, batch: int, conc: int, default_count: int, **kw: Any) -> Spec:
        n = count if count is not None else (None if duration_s else default_count)
        return Spec(workload, batch, conc, n, duration_s, size_bytes, **kw)
    return [
        spec("publish", 1, 64, 20_000),
        spec("publish", 100, 16, 200_000),
        spec("publish", 1000, 4, 400_000),
        spec("receive", 100, 8, 100_000),
        spec("receive", 100, 8, 100_000, ack_next=True),
        spec("receive", 1000, 4, 400_000),
        spec("e2e", 100, 4, 100_000, consumers=4),
        spec("e2e", 100, 4, 100_000, consumers=4, ack_next=True),
        spec("latency", 1, 1, 2_000),
        spec("publish", 100, 16, 200_000, durability="memory"),
        spec("latency", 1, 1, 2_000, durability="memory"),
        spec("topic-publish", 100, 16, 200_000),
        spec("topic-read", 1000, 4, 100_000),
    ]


def default_count(workload: str, batch: int) -> int:
    if workload == "latency":
        return 2_000
    return 100_000 if batch >= 10 else 20_000


# --------------------------------------------------------------------------------------------
# Wire format


class Codec:
    """JSON or MessagePack request/response bodies; `body` is text in JSON, bytes in msgpack."""

    def __init__(self, name: str) -> None:
        assert name in ("json", "msgpack"), name
        self.name = name
        self.content_type = MSGPACK_TYPE if name == "msgpack" else JSON_TYPE
        self.headers = {"Content-Type": self.content_type, "Accept": self.content_type}

    def dumps(self, obj: Any) -> bytes:
        if self.name == "msgpack":
            packed: bytes = msgpack.packb(obj, use_bin_type=True)
            return packed
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(self, raw: bytes) -> Any:
        if not raw:
            return {}
        if self.name == "msgpack":
            return msgpack.unpackb(raw, raw=False)
        return json.loads(raw)

    def body(self, text: str) -> str | bytes:
        return text.encode() if self.name == "msgpack" else text


def message_text(size_bytes: int, rng: random.Random) -> str:
    """An ASCII body of exactly size_bytes (same size as text and as bytes)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(rng.choice(alphabet) for _ in range(size_bytes))


def publish_bodies(codec: Codec, batch: int, size_bytes: int, topic: bool) -> list[bytes]:
    """BODY_VARIANTS pre-built publish requests of `batch` messages each."""
    rng = random.Random(size_bytes * 1009 + batch)
    texts = [message_text(size_bytes, rng) for _ in range(BODY_VARIANTS)]
    out = []
    for v in range(BODY_VARIANTS):
        msgs: list[dict[str, Any]] = [
            {"body": codec.body(texts[(v + i) % BODY_VARIANTS])} for i in range(batch)]
        out.append(codec.dumps({"messages": msgs}))
    assert len(out) == BODY_VARIANTS and all(out)
    return out


# --------------------------------------------------------------------------------------------
# Counters


class Budget:
    """Hands out requests: a fixed number (count mode) or until a deadline (duration mode)."""

    def __init__(self, requests: int | None, duration_s: float | None) -> None:
        assert requests is not None or duration_s is not None
        self.left = requests
        self.duration_s = duration_s
        self.deadline = math.inf

    def start(self) -> None:
        if self.duration_s is not None:
            self.deadline = time.perf_counter() + self.duration_s

    def take(self) -> bool:
        if time.perf_counter() >= self.deadline:
            return False
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass
class Stats:
    """What one side of a workload did: requests, messages, latencies, errors."""

    msgs: int = 0
    requests: int = 0
    body_bytes: int = 0
    latencies_s: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_messages: dict[str, str] = field(default_factory=dict)  # the first one per code

    def ok(self, latency_s: float, msgs: int, body_bytes: int) -> None:
        self.requests += 1
        self.msgs += msgs
        self.body_bytes += body_bytes
        self.latencies_s.append(latency_s)

    def fail(self, code: str, message: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        self.error_messages.setdefault(code, message[:300])
        if sum(self.errors.values()) > ERRORS_MAX:
            raise BenchError(f"more than {ERRORS_MAX} failed requests (ERRORS_MAX): {self.errors}")


def percentile(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[k]


def latency_summary(values_ms: list[float]) -> dict[str, float | None]:
    s = sorted(values_ms)
    out = {f"p{int(q * 100)}": percentile(s, q) for q in (0.5, 0.9, 0.99)}
    out["max"] = s[-1] if s else None
    return {k: (round(v, 3) if v is not None else None) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(root_pid: int) -> list[int]:
    """root_pid and every process below it (from /proc/*/stat parent links)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        parents[int(entry)] = int(data[data.rindex(")") + 2:].split()[1])
    found, frontier = [root_pid], [root_pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier and p not in found]
        found.extend(kids)
        frontier = kids
    return found


def host_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


@dataclass
class CpuUse:
    """CPU seconds over one measured window (node_s None: node PIDs unknown)."""

    node_s: float | None
    client_s: float
    host_busy_s: float   # the whole host: nodes, this client, kernel I/O and anyone else


class CpuMeter:
    """Node CPU (by PID), this client's CPU and the host's over one measured window."""

    def __init__(self, node_pids: list[int]) -> None:
        self.node_pids = node_pids
        self.node0 = self.client0 = self.host0 = 0.0

    def start(self) -> None:
        self.node0 = sum(proc_cpu_s(p) for p in self.node_pids)
        self.client0 = time.process_time()
        self.host0 = host_busy_s()[0]

    def stop(self) -> CpuUse:
        client = time.process_time() - self.client0
        host = host_busy_s()[0] - self.host0
        if not self.node_pids:
            return CpuUse(None, client, host)
        return CpuUse(sum(proc_cpu_s(p) for p in self.node_pids) - self.node0, client, host)


# --------------------------------------------------------------------------------------------
# HTTP


class Client:
    """A keep-alive session, the codec, the target base URLs and the bench's names."""

    def __init__(self, session: aiohttp.ClientSession, codec: Codec, urls: list[str]) -> None:
        assert urls
        self.session = session
        self.codec = codec
        self.urls = urls

    def base(self, worker: int) -> str:
        return self.urls[worker % len(self.urls)]

    async def raw(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        async with self.session.request(method, url, data=body,
                                        headers=self.codec.headers) as resp:
            return resp.status, await resp.read()

    async def call(self, method: str, url: str, obj: Any = None) -> tuple[int, Any]:
        body = None if obj is None else self.codec.dumps(obj)
        status, raw = await self.raw(method, url, body)
        try:
            return status, self.codec.loads(raw)
        except ValueError:
            return status, {"raw": raw[:200].decode(errors="replace")}

    def error_of(self, status: int, raw: bytes) -> tuple[str, str]:
        """(code, message) of an error answer."""
        try:
            error = self.codec.loads(raw)["error"]
            return str(error["code"]), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError):
            return f"http_{status}", raw[:200].decode(errors="replace")

    async def setup(self, method: str, path: str, obj: Any = None) -> Any:
        """A set-up call that must succeed (2xx), retried while the cluster is not ready."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                status, data = await self.call(method, self.urls[0] + path, obj)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise BenchError(f"{method} {self.urls[0]}{path}: {exc}") from exc
            if 200 <= status < 300:
                return data
            if status not in (429, 503) or time.monotonic() > deadline:
                raise BenchError(f"{method} {path} -> {status} {data}")
            await asyncio.sleep(RETRY_SLEEP_S_MAX)


async def timed(stats: Stats, client: Client, method: str, url: str,
                body: bytes | None) -> tuple[int, bytes, float]:
    """One request and its latency, retried while the answer is retryable (429/503: nothing
    was applied) up to RETRIES_MAX times; the latency includes the retries. Every failed
    attempt is counted in stats (status 0: no answer)."""
    t0 = time.perf_counter()
    for _attempt in range(RETRIES_MAX + 1):
        try:
            status, raw = await client.raw(method, url, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            stats.fail(type(exc).__name__, str(exc))
            await asyncio.sleep(RETRY_SLEEP_S_MAX)
            return 0, b"", 0.0
        if status < 300:
            break
        code, message = client.error_of(status, raw)
        stats.fail(code, message)
        if status not in (429, 503):
            break
        await asyncio.sleep(RETRY_SLEEP_S_MAX / 5)
    return status, raw, time.perf_counter() - t0


async def negotiate(session: aiohttp.ClientSession, url: str, wanted: str) -> Codec:
    """msgpack if the server answers a msgpack request in msgpack, else JSON."""
    if wanted != "auto":
        return Codec(wanted)
    codec = Codec("msgpack")
    try:
        async with session.get(url + "/v1/queues", headers=codec.headers) as resp:
            await resp.read()
            if resp.status == 200 and resp.content_type == MSGPACK_TYPE:
                return codec
    except aiohttp.ClientError:
        pass
    return Codec("json")


async def find_leader_url(session: aiohttp.ClientSession, urls: list[str]) -> str | None:
    """The leader's HTTP base URL from GET /v1/cluster, or None if not known."""
    for url in urls:
        try:
            async with session.get(url + "/v1/cluster") as resp:
                info = await resp.json()
        except (aiohttp.ClientError, ValueError):
            continue
        for member in info.get("members", []):
            if member.get("id") == info.get("leader") and member.get("http"):
                http = str(member["http"])
                return http.rstrip("/") if "://" in http else "http://" + http
    return None


# --------------------------------------------------------------------------------------------
# Workloads: each worker is one connection with one request in flight


@dataclass
class Run:
    """The state of one benchmark run shared by its workers."""

    spec: Spec
    client: Client
    queue: str
    topic: str
    producers: Stats = field(default_factory=Stats)
    consumers: Stats = field(default_factory=Stats)
    producers_done: bool = False
    target_msgs: int = 0          # receive/e2e: consumers stop after this many acks
    stop_at: float = math.inf     # consumers give up after this (perf_counter)

    def queue_url(self, worker: int) -> str:
        return f"{self.client.base(worker)}/v1/queues/{self.queue}"

    def topic_url(self, worker: int) -> str:
        return f"{self.client.base(worker)}/v1/topics/{self.topic}"


async def publish_worker(run: Run, stats: Stats, worker: int, budget: Budget,
                         bodies: list[bytes], batch: int, topic: bool) -> None:
    url = (run.topic_url(worker) if topic else run.queue_url(worker)) + "/messages"
    body_bytes = batch * run.spec.size_bytes
    i = worker
    while budget.take():
        status, _raw, latency_s = await timed(stats, run.client, "POST", url,
                                              bodies[i % len(bodies)])
        i += 1
        if status in (200, 201):
            stats.ok(latency_s, batch, body_bytes)


def consumers_finished(run: Run) -> bool:
    if time.perf_counter() >= run.stop_at:
        return True
    return run.producers_done and run.consumers.msgs >= run.target_msgs


async def receive_worker(run: Run, worker: int, wait_s: float) -> None:
    """Receive up to `batch`, ack them in one request; until the target or the queue is empty.
    With `ack_next` the ack of a batch rides on the next receive (`ack_receipts`)."""
    if run.spec.ack_next:
        await receive_ack_next_worker(run, worker, wait_s)
        return
    stats, codec = run.consumers, run.client.codec
    base = run.queue_url(worker)
    recv_body = codec.dumps({"max_messages": run.spec.batch, "wait_s": wait_s})
    while not consumers_finished(run):
        # An empty answer ends the worker only if the producers had finished before it was
        # asked for: they may publish everything while the receive waits for its answer.
        drained = run.producers_done
        status, raw, latency_s = await timed(stats, run.client, "POST", base + "/receive",
                                             recv_body)
        if status != 200:
            continue
        stats.requests += 1
        stats.latencies_s.append(latency_s)
        msgs = codec.loads(raw)["messages"]
        if not msgs:
            if drained:
                return
            continue
        note_received(stats, msgs)
        await ack_alone(run, stats, base, msgs)


def note_received(stats: Stats, msgs: list[dict[str, Any]]) -> None:
    """Publish -> receive latency of each message received."""
    now_ms = time.time() * 1000.0
    stats.e2e_ms.extend(now_ms - m["published_at"] for m in msgs)


def count_acked(stats: Stats, msgs: list[dict[str, Any]], latency_s: float) -> None:
    stats.ok(latency_s, len(msgs), sum(len(m["body"]) for m in msgs))


async def ack_alone(run: Run, stats: Stats, base: str, msgs: list[dict[str, Any]]) -> None:
    """POST /ack for one received batch; its messages count once the ack is answered."""
    ack = run.client.codec.dumps({"receipts": [m["receipt"] for m in msgs]})
    status, _raw, latency_s = await timed(stats, run.client, "POST", base + "/ack", ack)
    if status == 200:
        count_acked(stats, msgs, latency_s)


async def receive_ack_next_worker(run: Run, worker: int, wait_s: float) -> None:
    """One request per batch: each receive acks the batch before it; the last batch is acked
    alone. A message counts once its ack is answered."""
    stats, codec = run.consumers, run.client.codec
    base = run.queue_url(worker)
    held: list[dict[str, Any]] = []  # received, ack not yet sent
    while not consumers_finished(run):
        body: dict[str, Any] = {"max_messages": run.spec.batch, "wait_s": wait_s}
        if held:
            body["ack_receipts"] = [m["receipt"] for m in held]
        drained = run.producers_done  # as in receive_worker
        status, raw, latency_s = await timed(stats, run.client, "POST", base + "/receive",
                                             codec.dumps(body))
        if status != 200:
            continue
        if held:
            count_acked(stats, held, latency_s)
        else:
            stats.requests += 1
            stats.latencies_s.append(latency_s)
        held = codec.loads(raw)["messages"]
        note_received(stats, held)
        if not held and drained:
            return
    if held:
        await ack_alone(run, stats, base, held)


async def topic_read_worker(run: Run, worker: int, budget: Budget) -> None:
    """Replay partitions worker, worker + c, ... from offset 0, `batch` per request."""
    for partition in range(worker, run.spec.partitions, run.spec.concurrency):
        await read_partition(run, partition, budget)
    if worker >= run.spec.partitions:  # more readers than partitions: read one again
        await read_partition(run, worker % run.spec.partitions, budget)


async def read_partition(run: Run, partition: int, budget: Budget) -> None:
    stats, codec = run.consumers, run.client.codec
    url = f"{run.topic_url(partition)}/partitions/{partition}/messages"
    level = f"&consistency={run.spec.consistency}" if run.spec.consistency else ""
    offset = 0
    while budget.take():
        query = f"offset={offset}&max={run.spec.batch}{level}"
        status, raw, latency_s = await timed(stats, run.client, "GET", f"{url}?{query}", None)
        if status != 200:
            continue
        data = codec.loads(raw)
        msgs = data["messages"]
        if not msgs:
            return
        stats.ok(latency_s, len(msgs), sum(len(m["body"]) for m in msgs))
        assert data["next_offset"] > offset, (offset, data["next_offset"])
        offset = data["next_offset"]


def publishers(run: Run, stats: Stats, batch: int, concurrency: int, count: int | None,
               duration_s: float | None, topic: bool) -> list[Awaitable[None]]:
    """`concurrency` publish workers sharing one budget; the budget starts now."""
    bodies = publish_bodies(run.client.codec, batch, run.spec.size_bytes, topic)
    budget = Budget(None if count is None else math.ceil(count / batch), duration_s)
    budget.start()
    return [publish_worker(run, stats, w, budget, bodies, batch, topic)
            for w in range(concurrency)]


async def run_all(coros: list[Awaitable[None]]) -> None:
    """Run the workers; the first failure (e.g. too many errors) stops them all."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)  # type: ignore[arg-type]
    except* BenchError as eg:
        raise eg.exceptions[0] from None


async def prefill(run: Run, count: int, topic: bool) -> None:
    """Put `count` messages into the queue/topic before the clock starts (not measured)."""
    stats = Stats()
    batch = min(BATCH_MAX, count)
    await run_all(publishers(run, stats, batch, PREFILL_CONCURRENCY, count, None, topic))
    if stats.msgs < count:
        raise BenchError(f"pre-fill published {stats.msgs} of {count}: errors {stats.errors} "
                         f"{stats.error_messages}")


# --------------------------------------------------------------------------------------------
# One run: set up, measure, tear down, summarise

Starter = Callable[[], list[Awaitable[None]]]


async def e2e_producers(run: Run, coros: list[Awaitable[None]]) -> None:
    try:
        await run_all(coros)
    finally:
        run.target_msgs = run.producers.msgs
        run.stop_at = time.perf_counter() + DRAIN_TIMEOUT_S
        run.producers_done = True


def starter(run: Run) -> Starter:
    """What to start when the clock starts, per workload."""
    spec = run.spec
    topic = spec.workload.startswith("topic")

    def produce() -> list[Awaitable[None]]:
        return publishers(run, run.producers, spec.batch, spec.concurrency, spec.count,
                          spec.duration_s, topic)

    def receive() -> list[Awaitable[None]]:
        run.producers_done = True
        run.target_msgs = spec.count or spec.prefill or PREFILL_DEFAULT
        run.stop_at = time.perf_counter() + (spec.duration_s or math.inf)
        return [receive_worker(run, w, 0.0) for w in range(spec.concurrency)]

    def e2e() -> list[Awaitable[None]]:
        consumers = [receive_worker(run, w, E2E_WAIT_S)
                     for w in range(spec.consumers or spec.concurrency)]
        return [e2e_producers(run, produce()), *consumers]

    def topic_read() -> list[Awaitable[None]]:
        budget = Budget(COUNT_MAX, spec.duration_s)
        budget.start()
        return [topic_read_worker(run, w, budget) for w in range(spec.concurrency)]

    table: dict[str, Starter] = {"publish": produce, "latency": produce, "topic-publish": produce,
                                 "receive": receive, "e2e": e2e, "topic-read": topic_read}
    return table[spec.workload]


async def set_up(run: Run) -> None:
    spec = run.spec
    config: dict[str, Any] = {} if spec.durability is None else {"durability": spec.durability}
    if spec.workload.startswith("topic"):
        config["partitions"] = spec.partitions
        await run.client.setup("PUT", f"/v1/topics/{run.topic}", config)
    else:
        await run.client.setup("PUT", f"/v1/queues/{run.queue}", config)
    if spec.workload in ("receive", "topic-read"):
        count = spec.count or spec.prefill or PREFILL_DEFAULT
        await prefill(run, count, topic=spec.workload == "topic-read")


async def tear_down(run: Run) -> None:
    """Delete what the run created, so the next run starts from an empty broker."""
    path = f"/v1/topics/{run.topic}" if run.spec.workload.startswith("topic") \
        else f"/v1/queues/{run.queue}"
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        await run.client.call("DELETE", run.client.urls[0] + path)


async def show_progress(run: Run, t0: float, quiet: bool) -> None:
    """A progress line on stderr: rewritten in place on a terminal, else one line a period."""
    tty = sys.stderr.isatty()
    interval_s = PROGRESS_INTERVAL_S if tty else PROGRESS_INTERVAL_S * 5
    last_msgs, last_t = 0, t0
    while not quiet:
        await asyncio.sleep(interval_s)
        now = time.perf_counter()
        msgs = run.producers.msgs + run.consumers.msgs
        errors = sum(run.producers.errors.values()) + sum(run.consumers.errors.values())
        rate = (msgs - last_msgs) / (now - last_t)
        last_msgs, last_t = msgs, now
        start, end = ("\r", "") if tty else ("", "\n")
        sys.stderr.write(f"{start}  {run.spec.name():<24} {now - t0:6.1f}s {msgs:>10,} msgs "
                         f"{rate:>10,.0f} msg/s  errors {errors}   {end}")
        sys.stderr.flush()


async def measure(run: Run, meter: CpuMeter, quiet: bool) -> tuple[float, CpuUse]:
    """Run the workload; wall seconds and the CPU used meanwhile."""
    meter.start()
    t0 = time.perf_counter()
    progress = asyncio.create_task(show_progress(run, t0, quiet))
    try:
        await run_all(starter(run)())
    finally:
        progress.cancel()
        if not quiet and sys.stderr.isatty():
            sys.stderr.write("\n")
    wall_s = time.perf_counter() - t0
    cpu = meter.stop()
    assert wall_s > 0
    return wall_s, cpu


def cpu_fields(cpu: CpuUse, wall_s: float, msgs: int) -> dict[str, Any]:
    """CPU per message and in % of one core (a 2-core host has 200 %)."""
    def pct(s: float | None) -> float | None:
        return None if s is None else round(100 * s / wall_s, 1)

    def per_msg(s: float | None) -> float | None:
        return None if s is None or msgs == 0 else s / msgs

    other = None if cpu.node_s is None else max(0.0, cpu.host_busy_s - cpu.node_s - cpu.client_s)
    return {"node_cpu_s": None if cpu.node_s is None else round(cpu.node_s, 3),
            "node_cpu_s_per_msg": per_msg(cpu.node_s), "node_cpu_pct": pct(cpu.node_s),
            "client_cpu_s": round(cpu.client_s, 3), "client_cpu_s_per_msg": per_msg(cpu.client_s),
            "client_cpu_pct": pct(cpu.client_s), "host_cpu_pct": pct(cpu.host_busy_s),
            "other_cpu_pct": pct(other)}


def summarise(run: Run, wall_s: float, cpu: CpuUse) -> dict[str, Any]:
    spec = run.spec
    main = run.consumers if spec.workload in ("receive", "e2e", "topic-read") else run.producers
    lat = run.producers if spec.workload == "e2e" else main
    errors = dict(run.producers.errors)
    for code, n in run.consumers.errors.items():
        errors[code] = errors.get(code, 0) + n
    messages = {**run.consumers.error_messages, **run.producers.error_messages}
    return {
        "workload": spec.workload, "label": spec.name(), "batch": spec.batch,
        "concurrency": spec.concurrency, "consumers": spec.consumers, "size_bytes": spec.size_bytes,
        "partitions": spec.partitions, "durability": spec.durability or "default",
        "codec": run.client.codec.name, "urls": run.client.urls,
        "msgs": main.msgs, "requests": run.producers.requests + run.consumers.requests,
        "seconds": round(wall_s, 4), "msgs_per_s": round(main.msgs / wall_s, 1),
        "mb_per_s": round(main.body_bytes / wall_s / 1e6, 3),
        "latency_ms": latency_summary([x * 1000.0 for x in lat.latencies_s]),
        "e2e_latency_ms": latency_summary(run.consumers.e2e_ms) if spec.workload == "e2e"
        else None,
        **cpu_fields(cpu, wall_s, main.msgs),
        "errors": errors, "error_messages": messages,
    }


async def run_spec(spec: Spec, client: Client, meter: CpuMeter, seq: int,
                   quiet: bool) -> dict[str, Any]:
    name = f"bench-{os.getpid()}-{seq}-{spec.workload}"
    run = Run(spec, client, queue=name, topic=name.replace("-", "_"))
    await set_up(run)
    try:
        wall_s, cpu = await measure(run, meter, quiet)
    finally:
        await tear_down(run)
    return summarise(run, wall_s, cpu)


def client_session(gzip: bool = False) -> aiohttp.ClientSession:
    """Keep-alive connections, enough for CONCURRENCY_MAX workers, REQUEST_TIMEOUT_S each.

    Answers are not compressed unless `gzip` (`--gzip`): aiohttp (like `requests`) asks for
    gzip by default, and a node then deflates every answer of 64 KiB or more, which on
    loopback only costs node CPU (receive b1000: 34 vs 25 us/msg) and which the peers' AMQP
    and NATS clients never ask for (docs/benchmarks.md, session 4)."""
    connector = aiohttp.TCPConnector(limit=CONCURRENCY_MAX * 2, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        headers={"Accept-Encoding": "gzip, deflate" if gzip else "identity"})


async def run_specs(specs: list[Spec], urls: list[str], pids: list[int],
                    args: argparse.Namespace) -> list[dict[str, Any]]:
    async with client_session(args.gzip) as session:
        codec = await negotiate(session, urls[0], args.codec)
        meter = CpuMeter(pids)
        results = []
        for seq, spec in enumerate(specs):
            targets = urls
            if args.target == "leader":
                targets = [await find_leader_url(session, urls) or urls[0]]
            client = Client(session, codec, targets)
            try:
                results.append(await run_spec(spec, client, meter, seq, args.quiet))
            except BenchError as exc:
                if len(specs) == 1:
                    raise
                results.append(failed(spec, codec, targets, str(exc)))
        return results


def failed(spec: Spec, codec: Codec, urls: list[str], error: str) -> dict[str, Any]:
    """The record of a run that could not be done (the standard set goes on to the next)."""
    print(f"raftmq bench: {spec.name()}: {error}", file=sys.stderr)
    empty = latency_summary([])
    return {"workload": spec.workload, "label": spec.name(), "batch": spec.batch,
            "concurrency": spec.concurrency, "codec": codec.name, "urls": urls, "msgs": 0,
            "seconds": 0.0, "msgs_per_s": 0.0, "mb_per_s": 0.0, "latency_ms": empty,
            "e2e_latency_ms": None, "node_cpu_s_per_msg": None, "node_cpu_pct": None,
            "errors": {}, "failed": error}


# --------------------------------------------------------------------------------------------
# A local cluster of our own: `raftmq cluster up` as a subprocess, stopped by PID

URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)")
CLUSTER_STOP_TIMEOUT_S = 15.0
BASE_PORT_SPAN = 112             # ports checked free from --base-port: HTTP base+i, Raft base+100+i
CLI_BOOT = "import sys; from node.cli import main; sys.exit(main(sys.argv[1:]))"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(rng: random.Random) -> int:
    """A base port with BASE_PORT_SPAN free ports above it, below the ephemeral range."""
    for _ in range(50):
        base = rng.randrange(20000, 32000 - BASE_PORT_SPAN, 10)
        if all(port_free(base + i) for i in range(BASE_PORT_SPAN)):
            return base
    raise BenchError("no free range of ports for a local cluster; pass --base-port")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class LocalCluster:
    """`raftmq cluster up --nodes N --data-dir TMP --base-port P`, ready on every node."""

    def __init__(self, nodes: int, base_port: int | None, keep_data: bool) -> None:
        self.nodes = nodes
        self.base_port = base_port
        self.keep_data = keep_data
        self.dir = tempfile.mkdtemp(prefix="raftmq-bench-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self.pids: list[int] = []

    def command(self) -> list[str]:
        base = self.base_port or free_base_port(random.Random())
        return [sys.executable, "-c", CLI_BOOT, "cluster", "up", "--nodes", str(self.nodes),
                "--data-dir", os.path.join(self.dir, "data"), "--base-port", str(base)]

    def start(self) -> list[str]:
        log = open(os.path.join(self.dir, "cluster.log"), "wb")  # noqa: SIM115 (lives on)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        urls = self._wait_urls()
        self._wait_ready(urls)
        self.pids = descendants(self.proc.pid)
        return urls

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            with open(os.path.join(self.dir, "cluster.log"), errors="replace") as f:
                tail = f.read()[-2000:]
            self.keep_data = True
            raise BenchError(f"`raftmq cluster up` exited with {self.proc.returncode}:\n"
                             f"{''.join(self.lines)[-1000:]}{tail}\n"
                             f"node logs kept in {self.dir}/data/*.log")

    def _wait_urls(self) -> list[str]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            ports = list(dict.fromkeys(URL_RE.findall("".join(self.lines))))
            if len(ports) >= self.nodes:
                return [f"http://127.0.0.1:{p}" for p in ports[:self.nodes]]
            time.sleep(0.05)
        raise BenchError(f"`raftmq cluster up` printed no {self.nodes} node addresses within "
                         f"{READY_TIMEOUT_S}s (READY_TIMEOUT_S): {''.join(self.lines)!r}")

    def _wait_ready(self, urls: list[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(urls)
        while pending:
            self._check_alive()
            if time.monotonic() > deadline:
                self.keep_data = True
                raise BenchError(f"nodes not ready within {READY_TIMEOUT_S}s: {pending}; "
                                 f"node logs kept in {self.dir}/data/*.log")
            pending = [u for u in pending if not http_ok(u + "/readyz")]
            if pending:
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the supervisor, then SIGKILL whatever of ours is left, by PID."""
        if self.proc is not None:
            pids = self.pids or descendants(self.proc.pid)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(CLUSTER_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            for pid in pids[1:]:
                if os.path.exists(f"/proc/{pid}"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if not self.keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Command line and output


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="raftmq bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="?", choices=WORKLOADS)
    ap.add_argument("--standard", action="store_true", help="run the standard set, one table")
    ap.add_argument("--concurrency", "-c", type=int, help="connections, one request in flight "
                    "each (default 16; latency: 1)")
    ap.add_argument("--consumers", type=int, default=0, help="e2e consumers (default: -c)")
    ap.add_argument("--batch", "-b", type=int, help="messages per request (default 100)")
    ap.add_argument("--size", type=int, default=256, help="message body bytes (default 256)")
    ap.add_argument("--count", "-n", type=int, help="messages in total (failover: rounds)")
    ap.add_argument("--duration", type=float, help="seconds to run instead of --count")
    ap.add_argument("--partitions", type=int, default=1, help="topic partitions")
    ap.add_argument("--prefill", type=int, default=0, help="receive/topic-read with "
                    f"--duration: messages put in first (default {PREFILL_DEFAULT:,})")
    ap.add_argument("--durability", choices=("fsync", "memory"), help="queue/topic durability")
    ap.add_argument("--ack-next", action="store_true",
                    help="receive/e2e: ack each batch in the next receive (ack_receipts)")
    ap.add_argument("--consistency", choices=("local", "leader", "linearizable"),
                    help="topic-read: the reads' consistency (default: the server's, "
                         "linearizable; replay readers often choose local)")
    ap.add_argument("--url", action="append", default=[],
                    help="node URL(s), repeat or comma-separate (default: start a local cluster)")
    ap.add_argument("--target", choices=("leader", "all"), default="leader",
                    help="send to the leader (default) or spread connections over all URLs")
    ap.add_argument("--pids", default="", help="with --url: node PIDs for CPU accounting")
    ap.add_argument("--nodes", type=int, default=3, help="local cluster size")
    ap.add_argument("--base-port", type=int, help="local cluster base port (default: random)")
    ap.add_argument("--keep-data", action="store_true", help="keep the local cluster's dir")
    ap.add_argument("--codec", choices=("auto", "json", "msgpack"), default="auto")
    ap.add_argument("--gzip", action="store_true",
                    help="ask for gzip'd answers, as aiohttp and requests do by default "
                         "(the node then compresses answers of 64 KiB or more)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    args = ap.parse_args(argv)
    check_args(ap, args)
    return args


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.standard and not args.workload:
        ap.error("name a workload or pass --standard")
    limits = [("--batch", args.batch, 1, BATCH_MAX, "BATCH_MAX"),
              ("--concurrency", args.concurrency, 1, CONCURRENCY_MAX, "CONCURRENCY_MAX"),
              ("--consumers", args.consumers, 0, CONCURRENCY_MAX, "CONCURRENCY_MAX"),
              ("--size", args.size, 1, SIZE_BYTES_MAX, "SIZE_BYTES_MAX"),
              ("--count", args.count, 1, COUNT_MAX, "COUNT_MAX"),
              ("--prefill", args.prefill, 0, COUNT_MAX, "COUNT_MAX"),
              ("--duration", args.duration, 0.001, DURATION_S_MAX, "DURATION_S_MAX"),
              ("--partitions", args.partitions, 1, 1000, "partitions")]
    for flag, value, low, high, name in limits:
        if value is not None and not low <= value <= high:
            ap.error(f"{flag} {value}: must be within {low}..{high} ({name})")
    if args.ack_next and args.workload not in ("receive", "e2e"):
        ap.error("--ack-next: only for the receive and e2e workloads")
    if args.count is not None and args.duration is not None:
        ap.error("--count and --duration exclude each other")
    if args.workload in OPS_WORKLOADS and (args.url or args.standard):
        ap.error(f"{args.workload} kills and starts nodes: it runs on a local cluster of its "
                 "own (no --url, no --standard)")
    urls = [u.strip().rstrip("/") for item in args.url for u in item.split(",") if u.strip()]
    if any(not u.startswith(("http://", "https://")) for u in urls):
        ap.error(f"--url {urls}: each must start with http:// or https://")
    args.url = urls
    try:
        args.pids = [int(p) for p in args.pids.split(",") if p.strip()]
    except ValueError:
        ap.error(f"--pids {args.pids!r}: comma-separated process ids expected")


def build_specs(args: argparse.Namespace) -> list[Spec]:
    if args.standard:
        specs = standard_set(args.size, args.count, args.duration)
        return [replace(s, durability=s.durability or args.durability,  # memory rows stay
                        partitions=args.partitions) for s in specs]
    workload = args.workload
    if workload in OPS_WORKLOADS:  # --count: failover rounds / restart messages
        return [Spec(workload, 1, 1, args.count, None, args.size)]
    batch = 1 if workload == "latency" else (args.batch or 100)
    conc = 1 if workload == "latency" else (args.concurrency or 16)
    count = args.count
    if count is None and args.duration is None:
        count = default_count(workload, batch)
    return [Spec(workload, batch, conc, count, args.duration, args.size, args.consumers,
                 args.partitions, durability=args.durability, prefill=args.prefill,
                 consistency=args.consistency, ack_next=args.ack_next)]


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'workload':<24} {'msgs':>9} {'secs':>6} {'msg/s':>9} {'MB/s':>7} "
            f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'node µs/msg':>11} {'node CPU%':>9} {'errors':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        if r.get("failed"):
            lines.append(f"{r['label']:<24} FAILED: {r['failed'][:200]}")
            continue
        lat = r["latency_ms"]
        per_msg = r["node_cpu_s_per_msg"]
        lines.append(
            f"{r['label']:<24} {r['msgs']:>9,} {r['seconds']:>6.1f} {fmt(r['msgs_per_s']):>9} "
            f"{fmt(r['mb_per_s'], 2):>7} {fmt(lat['p50'], 2):>8} {fmt(lat['p90'], 2):>8} "
            f"{fmt(lat['p99'], 2):>8} {fmt(lat['max'], 2):>8} "
            f"{fmt(None if per_msg is None else per_msg * 1e6, 1):>11} "
            f"{fmt(r['node_cpu_pct'], 0):>9} {sum(r['errors'].values()):>6}")
    for r in results:
        if r["e2e_latency_ms"]:
            e = r["e2e_latency_ms"]
            lines.append(f"{r['label']}: publish->receive latency p50 {fmt(e['p50'], 1)} ms, "
                         f"p99 {fmt(e['p99'], 1)} ms (latency columns: publish requests)")
        if r["errors"]:
            lines.append(f"{r['label']}: failed attempts {r['errors']} "
                         f"(first messages: {r.get('error_messages')})")
    codec = results[0]["codec"] if results else "-"
    lines.append(f"codec {codec}; latency per HTTP request (receive: receive and ack requests); "
                 f"node CPU summed over the node processes")
    return "\n".join(lines)


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so a cluster we started is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    specs = build_specs(args)
    cluster = None
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    try:
        urls, pids = args.url, args.pids
        if not urls:
            cluster = LocalCluster(args.nodes, args.base_port, args.keep_data)
            if not args.quiet:
                print(f"starting a local {args.nodes}-node cluster in {cluster.dir}",
                      file=sys.stderr)
            urls = cluster.start()
            pids = cluster.pids
        if specs[0].workload in OPS_WORKLOADS:
            from raftmq import bench_ops
            assert cluster is not None
            result = asyncio.run(bench_ops.run_op(specs[0], cluster, urls, args.codec,
                                                  args.quiet))
            result["cluster"] = {"local": True, "urls": urls, "node_pids": cluster.pids}
            print(json.dumps(result, indent=1) if args.json else bench_ops.table(result))
            return 0
        results = asyncio.run(run_specs(specs, urls, pids, args))
    except BenchError as exc:
        print(f"raftmq bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        if cluster is not None:
            cluster.stop()
    status = 1 if any(r.get("failed") for r in results) else 0
    if args.json:
        print(json.dumps({"results": results, "cluster": {
            "local": cluster is not None, "urls": urls, "node_pids": pids}}, indent=1))
    else:
        print(table(results))
    return status


if __name__ == "__main__":
    # Run the module as `raftmq.bench`, not `__main__`: bench_ops imports raftmq.bench, and two
    # copies would have two BenchError classes (a failed failover/restart run was a traceback).
    from raftmq.bench import main as canonical_main
    sys.exit(canonical_main())
