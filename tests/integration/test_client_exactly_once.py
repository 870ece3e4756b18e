"""Exactly-once through the client on a real 3-node cluster, with kill -9 in the middle.

The client retries a publish with the same producer seq until it is answered, through any
node, so an application that just calls `publish()` in a loop ends with every message exactly
once, in order, whatever node dies (API.md "Exactly-once", docs/client.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import raftmq
from tests.support.cluster import REPO, Cluster, wait_until

PUBLISH_TIMEOUT_S = 120.0   # one publish may wait out an election or a whole-cluster restart


class DroppingProxies:
    """One HTTP proxy per node that forwards every request but, for every `every`-th publish,
    drops the connection after the node answered: applied, never acknowledged to the client."""

    def __init__(self, cluster: Cluster, every: int) -> None:
        self.cluster, self.every = cluster, every
        self.publishes = 0
        self.dropped = 0
        self.urls: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> DroppingProxies:
        self._thread.start()
        for node in self.cluster.nodes:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
            asyncio.run_coroutine_threadsafe(self._serve(sock, node.url), self._loop).result(10)
        return self

    async def _serve(self, sock: socket.socket, backend: str) -> None:
        async def forward(request: web.Request) -> web.StreamResponse:
            return await self._forward(request, backend)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runners.append(runner)

    async def _forward(self, request: web.Request, backend: str) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
        try:
            async with self._session.request(request.method, backend + request.path_qs,
                                             data=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=30)) as resp:
                raw = await resp.read()
                status, ctype = resp.status, resp.content_type
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError):
            return self._drop(request)  # the node died: the client sees a dropped connection
        if request.method == "POST" and request.path.endswith("/messages") and status == 201:
            self.publishes += 1
            if self.publishes % self.every == 0:
                self.dropped += 1
                return self._drop(request)
        extra = {"Retry-After": retry_after} if retry_after else None
        return web.Response(body=raw, status=status, content_type=ctype, headers=extra)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)

    def stop(self) -> None:
        async def close() -> None:
            for runner in self._runners:
                await runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def proxies(cluster: Cluster) -> Iterator[DroppingProxies]:
    p = DroppingProxies(cluster, every=7).start()
    try:
        yield p
    finally:
        p.stop()


class SeqPublisher(threading.Thread):
    """Publishes m00000..m{n-1} one request at a time through a client with a producer."""

    def __init__(self, cluster: Cluster, queue: str, count: int,
                 urls: list[str] | None = None) -> None:
        super().__init__(daemon=True)
        self.urls = urls or [n.url for n in cluster.nodes]
        self.queue, self.count = queue, count
        self.done = 0
        self.duplicates = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with raftmq.Client(self.urls, timeout_s=PUBLISH_TIMEOUT_S) as mq:
                for i in range(self.count):
                    if mq.publish(self.queue, f"m{i:05d}").duplicate:
                        self.duplicates += 1
                    self.done = i + 1
        except BaseException as exc:  # reported by the test
            self.error = exc


def drain(cluster: Cluster, queue: str) -> list[str]:
    got: list[str] = []
    with raftmq.Client([n.url for n in cluster.nodes if n.alive]) as mq:
        while True:
            msgs = mq.receive(queue, max_messages=1000, ack="auto")
            if not msgs:
                return got
            got += [m.text for m in msgs]


def wait_progress(pub: SeqPublisher, count: int) -> None:
    wait_until(lambda: pub.done >= count or pub.error is not None, timeout_s=180,
               what=f"{count} publishes acknowledged")
    assert pub.error is None, f"publisher failed: {pub.error!r}"


def kill_leader(cluster: Cluster) -> None:
    cluster.kill(cluster.leader())


def restart_dead(cluster: Cluster) -> None:
    dead = [n for n in cluster.nodes if not n.alive]
    for node in dead:
        cluster.start(node)
    cluster.wait_ready(dead)


def kill_all_and_restart(cluster: Cluster) -> None:
    for node in cluster.nodes:
        cluster.kill(node)
    cluster.start()
    cluster.wait_ready()


def run_with_faults(cluster: Cluster, count: int, faults: list[tuple[float, Any]],
                    urls: list[str] | None = None) -> SeqPublisher:
    with raftmq.Client([n.url for n in cluster.nodes]) as mq:
        mq.create_queue("eo")
    pub = SeqPublisher(cluster, "eo", count, urls)
    pub.start()
    try:
        for fraction, fault in faults:
            wait_progress(pub, int(count * fraction))
            fault(cluster)
        wait_progress(pub, count)
    finally:
        pub.join(PUBLISH_TIMEOUT_S)
    assert not pub.is_alive() and pub.error is None, f"publisher failed: {pub.error!r}"
    restart_dead(cluster)
    got = drain(cluster, "eo")
    expected = [f"m{i:05d}" for i in range(count)]
    assert len(got) == len(set(got)), f"duplicates: {len(got) - len(set(got))}"
    assert not set(expected) - set(got), f"lost: {sorted(set(expected) - set(got))[:10]}"
    assert got == expected, "every message exactly once and in publish order"
    return pub


def test_answers_dropped_after_apply_are_retried_without_duplicates(
        cluster: Cluster, proxies: DroppingProxies) -> None:
    """300 publishes; every 7th is applied but its answer is lost, and the leader is killed
    once: the client's retries with the same seq are answered as duplicates, never applied
    twice (a client that retries without seqs fails this with ~50 duplicates)."""
    pub = run_with_faults(cluster, 300, [(0.5, kill_leader)], urls=proxies.urls)
    assert proxies.dropped >= 30
    assert pub.duplicates >= proxies.dropped - 2, "each dropped answer is retried as a duplicate"


def test_2000_publishes_with_the_leader_killed_twice(cluster: Cluster) -> None:
    run_with_faults(cluster, 2000, [(0.25, kill_leader), (0.45, restart_dead),
                                    (0.6, kill_leader)])


def test_1000_publishes_across_a_whole_cluster_restart(cluster: Cluster) -> None:
    run_with_faults(cluster, 1000, [(0.5, kill_all_and_restart)])


CONSUMER = textwrap.dedent("""
    import sys
    import raftmq
    with raftmq.Client(sys.argv[1].split(","), timeout_s=60) as mq:
        while True:
            msgs = mq.receive("ctp-in", max_messages=10, wait_s=2, visibility_timeout_s=2)
            if not msgs:
                continue
            try:
                with mq.transaction() as txn:
                    for m in msgs:
                        txn.ack("ctp-in", m)
                        txn.publish("ctp-out", "out-" + m.text)
            except raftmq.StaleReceipt:
                pass  # redelivered meanwhile: another delivery will carry it
""")


def start_consumer(cluster: Cluster) -> subprocess.Popen[bytes]:
    urls = ",".join(n.url for n in cluster.nodes)
    return subprocess.Popen([sys.executable, "-c", CONSUMER, urls], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})


def out_published(mq: raftmq.Client) -> int:
    return int(mq.queue_info("ctp-out")["stats"]["published_total"])


@pytest.mark.parametrize("seed", [1])
def test_consume_transform_produce_with_the_consumer_killed(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    total = 1000
    with raftmq.Client([n.url for n in cluster.nodes]) as mq:
        mq.create_queue("ctp-in")
        mq.create_queue("ctp-out")
        for start in range(0, total, 100):
            mq.publish("ctp-in", [f"{i:04d}" for i in range(start, start + 100)])
        consumer = start_consumer(cluster)
        try:
            for _ in range(5):
                target = min(total - 1, out_published(mq) + rng.randint(20, 150))
                wait_until(lambda t=target, c=consumer: out_published(mq) >= t or
                           c.poll() is not None, timeout_s=60, what="consumer progress")
                assert consumer.poll() is None, consumer.stderr.read() if consumer.stderr else ""
                consumer.send_signal(signal.SIGKILL)
                consumer.wait(30)
                consumer = start_consumer(cluster)
            wait_until(lambda: out_published(mq) >= total and
                       mq.queue_info("ctp-in")["stats"]["in_flight"] == 0,
                       timeout_s=120, what="every input transformed")
        finally:
            consumer.kill()
            consumer.wait(30)
        info = mq.queue_info("ctp-in")["stats"]
        assert info["ready"] == 0 and info["in_flight"] == 0
        got = []
        while msgs := mq.receive("ctp-out", max_messages=1000, ack="auto"):
            got += [m.text for m in msgs]
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} outputs produced twice"
    assert sorted(got) == [f"out-{i:04d}" for i in range(total)]
