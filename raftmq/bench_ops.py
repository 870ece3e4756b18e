"""`raftmq bench failover` and `raftmq bench restart`: the operational targets of a broker.

Both need to kill and start node processes, so both run on a local cluster of their own
(`raftmq cluster up` in a temp dir, as every `raftmq bench` without `--url` does):

  failover  one publisher sends one message at a time, round-robin over the followers, with
            a short timeout and an immediate retry on any failure (what a client with a list
            of nodes does). Each round kills the leader with SIGKILL and measures the time
            from the kill to the first acknowledged publish sent after it; then the killed
            node is started again and every node must be ready before the next round.
  restart   fills one queue with `--count` messages (default 1,000,000) in batches of 1,000,
            waits until every node has applied them, reads each node's RSS; then kills a
            follower with SIGKILL, starts it again on the same data dir, and measures the time
            until its /readyz answers 200 and until it reports the whole queue.

Each prints its own table, or its JSON with `--json` (fields in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from raftmq import bench
from raftmq.bench import BenchError, Client, LocalCluster, Spec

FAILOVER_ROUNDS_DEFAULT = 5
FAILOVER_TIMEOUT_S = 30.0        # a round fails if no publish is acknowledged within this
FAILOVER_REQUEST_TIMEOUT_S = 1.0  # per publish attempt during a failover
FAILOVER_WARMUP_S = 2.0          # publishes acknowledged before each kill (steady state)
RESTART_COUNT_DEFAULT = 1_000_000
RESTART_TIMEOUT_S = 300.0        # the restarted node must be ready within this
FILL_BATCH = 1000
FILL_CONCURRENCY = 8
FILL_ATTEMPTS = 20               # per batch, after a failed answer (an election under the fill)
POLL_S = 0.01
SETTLE_TIMEOUT_S = 10.0  # restart: wait this long at most for the node's start-up heap trim


@dataclass
class Node:
    """One node process of the local cluster: its id, HTTP URL and how to start it again."""

    node_id: str
    url: str
    pid: int
    argv: list[str]
    cwd: str
    log_path: str


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def node_id_of(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/readyz") as resp:
        return str((await resp.json())["node"])


async def discover(session: aiohttp.ClientSession, cluster: LocalCluster,
                   urls: list[str]) -> dict[str, Node]:
    """Node id -> Node, from each URL's /readyz and each node process's command line."""
    by_id = {await node_id_of(session, u): u for u in urls}
    nodes: dict[str, Node] = {}
    for pid in cluster.pids[1:]:
        try:
            argv = cmdline(pid)
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if "--id" not in argv:
            continue
        node_id = argv[argv.index("--id") + 1]
        data_dir = argv[argv.index("--data-dir") + 1]
        nodes[node_id] = Node(node_id, by_id[node_id], pid, argv, cwd, data_dir + ".log")
    if set(nodes) != set(by_id):
        raise BenchError(f"node processes {sorted(nodes)} do not match the URLs {sorted(by_id)}")
    return nodes


def kill(node: Node) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(node.pid, signal.SIGKILL)


async def wait_dead(pid: int) -> None:
    """Until a killed process has exited (gone, or a zombie its parent has not reaped)."""
    deadline = time.monotonic() + bench.CLUSTER_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        await asyncio.sleep(POLL_S)
    raise BenchError(f"process {pid} still runs {bench.CLUSTER_STOP_TIMEOUT_S}s after SIGKILL")


def start_again(cluster: LocalCluster, node: Node) -> None:
    """Start a killed node with its old command line and data dir; stopped with the cluster."""
    with open(node.log_path, "ab") as log:
        proc = subprocess.Popen(node.argv, cwd=node.cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    node.pid = proc.pid
    cluster.pids.append(proc.pid)


async def readyz(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """/readyz's body when it answers 200, else None."""
    try:
        async with session.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            if resp.status == 200:
                body: dict[str, Any] = await resp.json()
                return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return None


async def wait_all_ready(session: aiohttp.ClientSession, nodes: dict[str, Node],
                         timeout_s: float) -> str:
    """Every node ready and agreeing on one leader; that leader's id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answers = [await readyz(session, n.url) for n in nodes.values()]
        leaders = {a["leader"] for a in answers if a is not None}
        if all(answers) and len(leaders) == 1 and None not in leaders:
            return str(leaders.pop())
        await asyncio.sleep(0.05)
    raise BenchError(f"the cluster was not ready with one leader within {timeout_s}s")


# --------------------------------------------------------------------------------------------
# failover


async def publish_once(client: Client, url: str, body: bytes) -> bool:
    timeout = aiohttp.ClientTimeout(total=FAILOVER_REQUEST_TIMEOUT_S)
    try:
        async with client.session.post(url, data=body, headers=client.codec.headers,
                                       timeout=timeout) as resp:
            await resp.read()
            return resp.status in (200, 201)
    except (aiohttp.ClientError, TimeoutError):
        return False


async def failover_round(client: Client, cluster: LocalCluster, nodes: dict[str, Node],
                         queue: str, body: bytes) -> dict[str, Any]:
    leader_id = await wait_all_ready(client.session, nodes, bench.READY_TIMEOUT_S)
    leader = nodes[leader_id]
    survivors = [n for n in nodes.values() if n.node_id != leader_id]
    urls = [f"{n.url}/v1/queues/{queue}/messages" for n in survivors]
    # Steady state first: one at a time through the followers, as after the kill.
    warm_until = time.monotonic() + FAILOVER_WARMUP_S
    i = acked_before = 0
    while time.monotonic() < warm_until:
        acked_before += await publish_once(client, urls[i % len(urls)], body)
        i += 1
    if acked_before == 0:
        raise BenchError(f"no publish acknowledged through {urls} before the kill")
    t_kill = time.monotonic()
    kill(leader)
    await wait_dead(leader.pid)
    attempts = 0
    while True:
        sent = time.monotonic()
        if sent - t_kill > FAILOVER_TIMEOUT_S:
            raise BenchError(f"no publish acknowledged within {FAILOVER_TIMEOUT_S}s "
                             "(FAILOVER_TIMEOUT_S) after killing the leader")
        attempts += 1
        if await publish_once(client, urls[attempts % len(urls)], body):
            break
        await asyncio.sleep(POLL_S)
    first_ack_s = time.monotonic() - t_kill
    new_leader = None
    for n in survivors:
        answer = await readyz(client.session, n.url)
        if answer is not None:
            new_leader = answer["leader"]
            break
    start_again(cluster, leader)
    return {"killed": leader_id, "new_leader": new_leader, "first_ack_s": round(first_ack_s, 4),
            "attempts": attempts, "acked_before": acked_before}


async def failover(client: Client, cluster: LocalCluster, urls: list[str],
                   spec: Spec, quiet: bool) -> dict[str, Any]:
    nodes = await discover(client.session, cluster, urls)
    queue = f"bench-{os.getpid()}-failover"
    await client.setup("PUT", f"/v1/queues/{queue}", {})
    body = bench.publish_bodies(client.codec, 1, spec.size_bytes, topic=False)[0]
    rounds = []
    t0 = time.perf_counter()
    for r in range(spec.count or FAILOVER_ROUNDS_DEFAULT):
        result = await failover_round(client, cluster, nodes, queue, body)
        rounds.append(result)
        if not quiet:
            print(f"  failover round {r + 1}: killed {result['killed']}, new leader "
                  f"{result['new_leader']}, first ack after {result['first_ack_s'] * 1000:,.0f} ms",
                  file=sys.stderr)
    await wait_all_ready(client.session, nodes, bench.READY_TIMEOUT_S)
    times = [x["first_ack_s"] for x in rounds]
    return {"workload": "failover", "label": spec.name(), "rounds": rounds,
            "seconds": round(time.perf_counter() - t0, 3),
            "first_ack_ms": {"median": round(statistics.median(times) * 1000, 1),
                             "min": round(min(times) * 1000, 1),
                             "max": round(max(times) * 1000, 1)}}


# --------------------------------------------------------------------------------------------
# restart (memory and start-up time with a full queue)


async def queue_ready(client: Client, url: str, queue: str) -> int | None:
    """The queue's ready count as this node has applied it (consistency=local)."""
    try:
        status, info = await client.call("GET", f"{url}/v1/queues/{queue}?consistency=local")
    except (aiohttp.ClientError, TimeoutError):
        return None
    return int(info["stats"]["ready"]) if status == 200 else None


@dataclass
class Fill:
    acked: int = 0
    retries: int = 0


async def fill_queue(client: Client, url: str, count: int, size_bytes: int) -> Fill:
    """`count` messages (rounded up to FILL_BATCH) from FILL_CONCURRENCY connections. A batch
    that fails (an election under the load: 503, or 504 outcome unknown) is sent again: this
    fills a queue, it measures nothing."""
    bodies = bench.publish_bodies(client.codec, FILL_BATCH, size_bytes, topic=False)
    batches = iter(range(-(-count // FILL_BATCH)))
    fill = Fill()

    async def worker() -> None:
        for i in batches:
            for _attempt in range(FILL_ATTEMPTS):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    status, _raw = await client.raw("POST", url, bodies[i % len(bodies)])
                    if status == 201:
                        fill.acked += FILL_BATCH
                        break
                fill.retries += 1
                await asyncio.sleep(bench.RETRY_SLEEP_S_MAX)
            else:
                raise BenchError(f"a batch failed {FILL_ATTEMPTS} times (FILL_ATTEMPTS)")

    await asyncio.gather(*(worker() for _ in range(FILL_CONCURRENCY)))
    return fill


async def elections(client: Client, nodes: dict[str, Node]) -> int:
    """Elections started so far, summed over the nodes' /metrics."""
    return sum([int(await metric(client, node.url, "raftmq_raft_elections_started_total") or 0)
                for node in nodes.values()])


async def wait_queue_everywhere(client: Client, nodes: dict[str, Node], queue: str,
                                count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for node in nodes.values():
        while (await queue_ready(client, node.url, queue) or 0) < count:
            if time.monotonic() > deadline:
                raise BenchError(f"{node.node_id} did not apply {count} messages in {timeout_s}s")
            await asyncio.sleep(0.2)


async def metric(client: Client, url: str, name: str) -> float | None:
    """One unlabelled metric of a node's /metrics, None when absent or unreachable."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        status, raw = await client.raw("GET", url + "/metrics")
        for line in raw.decode().splitlines():
            if status == 200 and line.startswith(name + " "):
                return float(line.split()[1])
    return None


async def heap_trimmed(client: Client, url: str, timeout_s: float) -> bool:
    """Wait for the node's start-up heap trim (node/heap_trim.py: once ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await metric(client, url, "raftmq_heap_trims_total") or 0) >= 1:
            return True
        await asyncio.sleep(POLL_S)
    return False


async def restart(client: Client, cluster: LocalCluster, urls: list[str],
                  spec: Spec, quiet: bool) -> dict[str, Any]:
    nodes = await discover(client.session, cluster, urls)
    leader_id = await wait_all_ready(client.session, nodes, bench.READY_TIMEOUT_S)
    queue = f"bench-{os.getpid()}-restart"
    count = spec.count or RESTART_COUNT_DEFAULT
    await client.setup("PUT", f"/v1/queues/{queue}", {})
    elections0 = await elections(client, nodes)
    t_fill = time.perf_counter()
    if not quiet:
        print(f"  filling {queue} with {count:,} messages of {spec.size_bytes} bytes",
              file=sys.stderr)
    fill = await fill_queue(client, f"{nodes[leader_id].url}/v1/queues/{queue}/messages",
                            count, spec.size_bytes)
    fill_s = time.perf_counter() - t_fill
    fill_elections = await elections(client, nodes) - elections0
    # A batch answered 504 (outcome unknown) and sent again may be in twice: count what is there.
    await wait_queue_everywhere(client, nodes, queue, fill.acked, RESTART_TIMEOUT_S)
    count = await queue_ready(client, nodes[leader_id].url, queue) or fill.acked
    rss_before = {n.node_id: rss_bytes(n.pid) for n in nodes.values()}
    victim = next(n for n in nodes.values() if n.node_id != leader_id)
    kill(victim)
    await wait_dead(victim.pid)
    t_start = time.monotonic()
    start_again(cluster, victim)
    ready_s = None
    while time.monotonic() - t_start < RESTART_TIMEOUT_S:
        if await readyz(client.session, victim.url) is not None:
            ready_s = time.monotonic() - t_start
            break
        await asyncio.sleep(POLL_S)
    if ready_s is None:
        raise BenchError(f"{victim.node_id} not ready {RESTART_TIMEOUT_S}s after its restart "
                         "(RESTART_TIMEOUT_S)")
    while (await queue_ready(client, victim.url, queue) or 0) < count:
        if time.monotonic() - t_start > RESTART_TIMEOUT_S:
            raise BenchError(f"{victim.node_id} did not report {count} messages after restart")
        await asyncio.sleep(POLL_S)
    full_s = time.monotonic() - t_start
    rss_after = rss_bytes(victim.pid)
    trimmed = await heap_trimmed(client, victim.url, SETTLE_TIMEOUT_S)
    rss_settled = rss_bytes(victim.pid)
    if not quiet:
        print(f"  {victim.node_id}: ready {ready_s:.2f}s after start, holding all {count:,} "
              f"after {full_s:.2f}s", file=sys.stderr)
    return {"workload": "restart", "label": spec.name(), "msgs": count,
            "size_bytes": spec.size_bytes, "fill_s": round(fill_s, 2),
            "fill_msgs_per_s": round(count / fill_s, 1), "fill_retries": fill.retries,
            "fill_elections": fill_elections,
            "rss_mb": {k: round(v / 2**20, 1) for k, v in rss_before.items()},
            "rss_mb_max": round(max(rss_before.values()) / 2**20, 1),
            "restarted": victim.node_id, "ready_s": round(ready_s, 3),
            "all_messages_s": round(full_s, 3),
            "rss_mb_after_restart": round(rss_after / 2**20, 1),
            "rss_mb_settled": round(rss_settled / 2**20, 1), "heap_trimmed": trimmed,
            "seconds": round(time.perf_counter() - t_fill, 2)}


OPS = {"failover": failover, "restart": restart}


async def run_op(spec: Spec, cluster: LocalCluster, urls: list[str], codec_name: str,
                 quiet: bool) -> dict[str, Any]:
    async with bench.client_session() as session:
        codec = await bench.negotiate(session, urls[0], codec_name)
        client = Client(session, codec, urls)
        return await OPS[spec.workload](client, cluster, urls, spec, quiet)


def table(result: dict[str, Any]) -> str:
    if result["workload"] == "failover":
        lines = [f"{'round':>5} {'killed':>8} {'new leader':>10} {'first ack ms':>12} "
                 f"{'attempts':>8}"]
        for i, r in enumerate(result["rounds"], 1):
            lines.append(f"{i:>5} {r['killed']:>8} {str(r['new_leader']):>10} "
                         f"{r['first_ack_s'] * 1000:>12,.0f} {r['attempts']:>8}")
        f = result["first_ack_ms"]
        lines.append(f"leader kill -9 to first acknowledged publish: median {f['median']:,.0f} "
                     f"ms, min {f['min']:,.0f}, max {f['max']:,.0f} "
                     f"({len(result['rounds'])} rounds)")
        return "\n".join(lines)
    rss = ", ".join(f"{k} {v:,.0f} MiB" for k, v in sorted(result["rss_mb"].items()))
    return "\n".join([
        f"filled {result['msgs']:,} messages of {result['size_bytes']} bytes in "
        f"{result['fill_s']:.1f} s ({result['fill_msgs_per_s']:,.0f} msg/s; "
        f"{result['fill_elections']} elections, {result['fill_retries']} batches sent again)",
        f"RSS per node holding them: {rss} (max {result['rss_mb_max']:,.0f} MiB)",
        f"{result['restarted']} killed (SIGKILL) and started again: /readyz 200 after "
        f"{result['ready_s']:.2f} s, all {result['msgs']:,} messages reported after "
        f"{result['all_messages_s']:.2f} s; RSS then {result['rss_mb_after_restart']:,.0f} MiB, "
        f"{result['rss_mb_settled']:,.0f} MiB after its start-up heap trim"
        + ("" if result["heap_trimmed"] else " (none seen: not glibc?)")])
