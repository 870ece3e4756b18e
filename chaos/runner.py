"""One chaos run: namespaces, nodes, workload + nemesis, heal, drain, check, report."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from chaos import disk, report
from chaos.checker import availability, check_queue, check_topic, check_txn
from chaos.client import Http
from chaos.cluster import Cluster, default_node_cmd, faketime_lib
from chaos.faults import Fault, Nemesis, schedule
from chaos.history import OK, History
from chaos.lazyfs import LazyMounts
from chaos.lazyfs import unavailable_reason as lazyfs_unavailable
from chaos.netns import NetnsUnavailable, Network, cleanup_orphans, enter_netns, unavailable_reason
from chaos.topics import TopicWorkload
from chaos.txn import TxnWorkload
from chaos.workload import Target, Workload, WorkloadConfig

READY_TIMEOUT_S = 60.0
SETUP_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 30.0
WORKLOAD_STOP_TIMEOUT_S = 15.0
WORKLOADS = ("queue", "topic", "txn", "mixed")
TXN_WORKLOADS = ("txn", "mixed")  # workloads that run the transaction workload
T = TypeVar("T")


@dataclass
class RunConfig:
    nodes: int = 3
    duration_s: float = 60.0
    faults: list[str] = field(default_factory=lambda: ["kill", "pause", "partition"])
    workload: str = "queue"
    seed: int = 1
    out: Path = Path("chaos-out")
    node_cmd: list[str] = field(default_factory=default_node_cmd)
    wl: WorkloadConfig = field(default_factory=WorkloadConfig)


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run once; returns the report dict (also written to cfg.out). Raises NetnsUnavailable."""
    faults = schedule(cfg.faults, cfg.nodes, cfg.duration_s, cfg.seed)
    reason = unavailable_reason()
    if not reason and any(f.kind.startswith("power") for f in faults):
        reason = lazyfs_unavailable()
    if not reason and any(f.kind.startswith("clock") for f in faults) and not faketime_lib():
        reason = "clock faults need libfaketime (Debian package faketime)"
    if not reason and any(f.kind.startswith("disk") for f in faults):
        reason = disk.unavailable_reason()
    if reason:
        raise NetnsUnavailable(reason)
    cleanup_orphans()
    cfg.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cfg.out / "cluster", ignore_errors=True)  # a previous run's data dirs
    history = History()
    started = time.time()
    mounts = LazyMounts()
    disks = disk.SmallDisks()
    with Network(cfg.nodes) as net:
        cluster = Cluster(net, cfg.out / "cluster", node_cmd=cfg.node_cmd,
                          clock_control=any(f.kind.startswith("clock") for f in faults))
        try:
            if any(f.kind.startswith("power") for f in faults):
                for node in cluster.nodes:
                    mounts.add(node.index, node.data_dir, cfg.out / f"lazyfs-{node.node_id}.log")
            if any(f.kind.startswith("disk") for f in faults):
                for node in cluster.nodes:
                    if node.index not in mounts.mounts:  # a lazy mount has no capacity
                        disks.add(node.index, node.data_dir)
            cluster.start_all()
            phases = in_netns(net.client_ns,
                              lambda: _main(cfg, cluster, net, history, faults, mounts, disks))
        finally:
            cluster.stop_all()
            mounts.unmount_all()
            disks.unmount_all()
    history.dump(cfg.out / "history.jsonl")
    result = _judge(cfg, history, faults, phases, started)
    result["node_logs"] = scan_node_logs(cfg.out / "cluster")
    report.write(cfg.out, result, history.ops)
    return result


def in_netns(ns: str, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh event loop in a thread that lives in namespace `ns`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(ns)
            box["result"] = asyncio.run(make())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"chaos-{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


async def _main(cfg: RunConfig, cluster: Cluster, net: Network, history: History,
                faults: list[Fault], mounts: LazyMounts,
                disks: disk.SmallDisks) -> dict[str, Any]:
    http = Http()
    try:
        targets = [Target(n.node_id, n.http_url) for n in cluster.nodes]
        wl = Workload(http, history, targets, cfg.wl, cfg.seed)
        tw = TopicWorkload(http, history, targets, cfg.seed)
        xw = TxnWorkload(http, history, targets, cfg.seed,
                         drain_timeout_s=cfg.wl.drain_timeout_s)
        nemesis = Nemesis(cluster, net, http, history, cfg.seed, lazyfs=mounts, disks=disks)
        phases: dict[str, Any] = {}
        phases["ready_s"] = await wait_ready(http, targets, READY_TIMEOUT_S)
        if phases["ready_s"] is None:
            phases["error"] = "cluster never became ready"
            return phases
        queues = cfg.workload in ("queue", "mixed")
        topics = cfg.workload in ("topic", "mixed")
        txns = cfg.workload in TXN_WORKLOADS
        if queues and not await _create_queue(wl, targets):
            phases["error"] = "could not create the queue"
            return phases
        if topics and not await tw.setup():
            phases["error"] = "could not create the topic (does the server have topics?)"
            return phases
        if txns and not await xw.setup():
            phases["error"] = "could not create the transaction queues"
            return phases
        await _exercise(cfg, wl if queues else None, tw if topics else None, nemesis, faults,
                        xw if txns else None)
        await nemesis.heal_all()
        phases["ready_after_heal_s"] = await wait_ready(http, targets, READY_TIMEOUT_S)
        t_drain = time.monotonic()
        phases["drained"] = await wl.drain() if queues else True
        if txns:
            phases["txn_drained"] = await xw.drain()
            phases["drained"] = phases["drained"] and phases["txn_drained"]
        phases["drain_s"] = round(time.monotonic() - t_drain, 2)
        if queues:
            await wl.final_state(settle_timeout_s=min(SETTLE_TIMEOUT_S, cfg.wl.drain_timeout_s))
        if topics:
            phases["topic_watermarks_agreed"] = await tw.final_reads()
        history.nemesis("note", {"drain_complete": phases["drained"]})
        return phases
    finally:
        await http.close()


async def _exercise(cfg: RunConfig, wl: Workload | None, tw: TopicWorkload | None,
                    nemesis: Nemesis, faults: list[Fault], xw: TxnWorkload | None) -> None:
    tasks = []
    if xw is not None:
        tasks += [asyncio.create_task(xw.feeder(i)) for i in range(xw.feeders)]
        tasks += [asyncio.create_task(xw.transformer(i)) for i in range(xw.transformers)]
        tasks += [asyncio.create_task(xw.reader(i)) for i in range(xw.readers)]
    if wl is not None:
        tasks += [asyncio.create_task(wl.producer(i)) for i in range(cfg.wl.producers)]
        tasks += [asyncio.create_task(wl.consumer(i)) for i in range(cfg.wl.consumers)]
    if tw is not None:
        tasks += [asyncio.create_task(tw.producer(i)) for i in range(tw.producers)]
        tasks += [asyncio.create_task(tw.reader(i)) for i in range(tw.readers)]
        tasks += [asyncio.create_task(tw.subscriber(i)) for i in range(tw.subscribers)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await nemesis.run(faults, t0)
        await asyncio.sleep(max(0.0, t0 + cfg.duration_s - loop.time()))
    finally:
        for w in (wl, tw, xw):
            if w is not None:
                w.stop.set()
        _done, pending = await asyncio.wait(tasks, timeout=WORKLOAD_STOP_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _create_queue(wl: Workload, targets: list[Target]) -> bool:
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for target in targets:
            out = await wl.ensure_queue(target)
            if out.type == OK:
                return True
        await asyncio.sleep(0.5)
    return False


async def wait_ready(http: Http, targets: list[Target], timeout_s: float) -> float | None:
    """Seconds until every node answers /readyz 200, or None after `timeout_s`."""
    start = time.monotonic()
    pending = list(targets)
    while pending and time.monotonic() - start < timeout_s:
        out = await http.call("GET", f"{pending[0].url}/readyz", timeout_s=2.0)
        if out.type == OK:
            pending.pop(0)
        else:
            await asyncio.sleep(0.2)
    return None if pending else round(time.monotonic() - start, 2)


def _judge(cfg: RunConfig, history: History, faults: list[Fault], phases: dict[str, Any],
           started: float) -> dict[str, Any]:
    queue = check_queue(history.ops)
    allow_memory_loss(queue, cfg.wl.durability, faults)
    topic = check_topic(history.ops)
    txn = check_txn(history.ops)
    avail = availability(history.ops)
    setup_ok = "error" not in phases and bool(phases.get("drained"))
    valid = setup_ok and queue["valid"] and topic["valid"] and txn["valid"]
    counts = {c: a["count"] for c, a in queue["anomalies"].items()}
    if cfg.workload in ("topic", "mixed"):
        counts.update({f"topic.{c}": a["count"] for c, a in topic["anomalies"].items()})
    if cfg.workload in TXN_WORKLOADS:
        counts.update({f"txn.{c}": a["count"] for c, a in txn["anomalies"].items()})
    return {
        "valid": valid,
        "seed": cfg.seed,
        "nodes": cfg.nodes,
        "duration_s": cfg.duration_s,
        "faults_requested": cfg.faults,
        "durability": cfg.wl.durability,
        "workload": cfg.workload,
        "started_at": started,
        "wall_s": round(time.time() - started, 1),
        "phases": phases,
        "schedule": [asdict(f) for f in faults],
        "ops": len(history.ops),
        "queue": queue,
        "topic": topic,
        "txn": txn,
        "availability": avail,
        "anomaly_counts": counts,
    }


LOG_MARKERS = {"tracebacks": "Traceback (most recent call last)",
               "critical": "level=CRITICAL", "errors": "level=ERROR",
               "resyncs": "event=node_resync_restart"}  # docs/durability.md


def allow_memory_loss(queue: dict[str, Any], durability: str, faults: list[Fault]) -> None:
    """`durability: memory` may lose the newest acked publishes when a node that held them
    loses power (docs/durability.md), and only then: after a power fault, `lost` moves from
    the anomalies to `stats.lost_memory_allowed`. Every other check stands."""
    if durability != "memory" or not any(f.kind.startswith("power") for f in faults):
        return
    lost = queue["anomalies"]["lost"]
    queue["stats"]["lost_memory_allowed"] = lost["count"]
    queue["anomalies"]["lost"] = {"count": 0, "examples": []}
    queue["valid"] = not any(a["count"] for a in queue["anomalies"].values())


def scan_node_logs(cluster_dir: Path) -> dict[str, dict[str, int]]:
    """Per node log: how many tracebacks, CRITICAL and ERROR lines (not a verdict: a node that
    logs an exception every second and carries on is worth a look; see chaos/README.md)."""
    counts: dict[str, dict[str, int]] = {}
    for path in sorted(cluster_dir.glob("n*.log")):
        text = path.read_text(errors="replace")
        counts[path.stem] = {k: text.count(marker) for k, marker in LOG_MARKERS.items()}
    return counts


def summary_line(result: dict[str, Any]) -> str:
    bad = {c: n for c, n in result["anomaly_counts"].items() if n}
    verdict = "VALID" if result["valid"] else "INVALID"
    return (f"{verdict} seed={result['seed']} nodes={result['nodes']} ops={result['ops']} "
            f"acked={result['queue']['stats']['publish_acked']} "
            f"faults={len(result['schedule'])} anomalies={json.dumps(bad)} "
            f"node_tracebacks={sum(c['tracebacks'] for c in result.get('node_logs', {}).values())} "
            f"phases={json.dumps(result['phases'])}")
