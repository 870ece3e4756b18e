"""The topic workload: idempotent keyed publishes, readers on every node, group offsets.

Producers publish unique values with key ``k<worker>`` (one partition per producer, so its
offsets must grow) and ``"producer": {id, epoch, seq}``, retrying the same seq after an unknown
outcome. Readers follow random partitions through random nodes from their own cursor, and
commit / read back the consumer-group offset of what they read. After healing, `final_reads`
reads every partition from its low watermark through EACH node (``consistency=local``) once the
nodes agree on the high watermarks, for the lost / lost-on-node / divergence checks.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from chaos.client import CONNECT_TIMEOUT_S, Http, Outcome, classify
from chaos.history import FAIL, INFO, OK, History
from chaos.workload import BACKOFF_S, Target, until_done

TOPIC = "chaos-t"
GROUP = "chaos-g"
PARTITIONS = 2
READ_MAX = 100
FINAL_SETTLE_S = 30.0
SUBSCRIBE_STREAM_S_MIN = 3.0  # each live subscription is closed after a random time in this
SUBSCRIBE_STREAM_S_MAX = 10.0  # range, and a new one opened (on a random node)
SUBSCRIBE_READ_TIMEOUT_S = 20.0  # longer than the server's 15 s heartbeat
SUBSCRIBE_POLL_S = 1.0  # how often a waiting subscriber checks whether to stop


@dataclass
class TopicWorkload:
    http: Http
    history: History
    targets: list[Target]
    seed: int
    producers: int = 2
    readers: int = 2
    subscribers: int = 1
    pace_s: float = 0.01
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def setup(self) -> bool:
        """Create the topic; False when the server has no topics (the workload is skipped)."""
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            for t in self.targets:
                out = await self.http.call("PUT", f"{t.url}/v1/topics/{TOPIC}",
                                           {"partitions": PARTITIONS})
                if out.type == OK:
                    return True
                if out.status in (404, 405) and out.code in (None, "not_found"):
                    return False
            await asyncio.sleep(0.5)
        return False

    async def _op(self, process: str, f: str, value: dict[str, Any], target: Target,
                  method: str, path: str, body: Any = None) -> Outcome:
        inv = self.history.invoke(process, f, value, target.node_id)
        out = await self.http.call(method, f"{target.url}{path}", body)
        result = self._ok_value(f, out.body) if out.type == OK else out.short()
        self.history.complete(inv, out.type, result)
        return out

    @staticmethod
    def _ok_value(f: str, body: Any) -> Any:
        body = body if isinstance(body, dict) else {}
        if f == "topic-publish":
            return {"offsets": [[m.get("partition"), m.get("offset")]
                                for m in body.get("messages", [])],
                    "duplicate": body.get("duplicate")}
        if f == "topic-read":
            return {"messages": [[m.get("offset"), m.get("body")]
                                 for m in body.get("messages", [])],
                    "next_offset": body.get("next_offset"),
                    "high_watermark": body.get("high_watermark"),
                    "low_watermark": body.get("low_watermark")}
        return body

    # -- producers --------------------------------------------------------------------------
    async def producer(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + 700 + worker)
        generation = 0
        while not self.stop.is_set():
            generation += 1
            pid = f"chaos-t{worker}-g{generation}-{self.seed}"
            out = await self.http.call("POST", f"{rng.choice(self.targets).url}/v1/producers",
                                       {"id": pid})
            if out.type != OK or not isinstance(out.body, dict):
                await asyncio.sleep(BACKOFF_S)
                continue
            await self._produce(worker, generation, pid, int(out.body["epoch"]), rng)

    async def _produce(self, worker: int, gen: int, pid: str, epoch: int,
                       rng: random.Random) -> None:
        seq = 0
        while not self.stop.is_set():
            values = [f"t{worker}g{gen}s{seq}m{k}" for k in range(rng.randint(1, 3))]
            body = {"messages": [{"body": v, "key": f"k{worker}"} for v in values],
                    "producer": {"id": pid, "epoch": epoch, "seq": seq}}
            value = {"topic": TOPIC, "values": values, "producer": pid, "seq": seq}
            if not await self._publish_until_done(f"tw{worker}", value, body, rng):
                return
            seq += 1
            await asyncio.sleep(rng.uniform(0, self.pace_s))

    async def _publish_until_done(self, process: str, value: dict[str, Any],
                                  body: dict[str, Any], rng: random.Random) -> bool:
        return await until_done(
            lambda: self._op(process, "topic-publish", value, rng.choice(self.targets),
                             "POST", f"/v1/topics/{TOPIC}/messages", body), self.stop)

    # -- readers ----------------------------------------------------------------------------
    async def reader(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + 900 + worker)
        cursors = dict.fromkeys(range(PARTITIONS), 0)
        process = f"tr{worker}"
        while not self.stop.is_set():
            part = rng.randrange(PARTITIONS)
            target = rng.choice(self.targets)
            out = await self.read(process, target, part, cursors[part])
            if out.type == OK and isinstance(out.body, dict):
                cursors[part] = int(out.body.get("next_offset") or cursors[part])
                if rng.random() < 0.2:
                    await self._commit_and_check(process, rng, part, cursors[part])
            else:
                await asyncio.sleep(BACKOFF_S)
            await asyncio.sleep(rng.uniform(0, self.pace_s))

    async def read(self, process: str, target: Target, part: int, offset: int,
                   final: bool = False) -> Outcome:
        consistency = "local" if final else "linearizable"
        query = f"offset={offset}&max={READ_MAX}&consistency={consistency}"
        value = {"topic": TOPIC, "partition": part, "offset": offset, "node": target.node_id,
                 "final": final, "consistency": consistency}
        return await self._op(process, "topic-read", value, target, "GET",
                              f"/v1/topics/{TOPIC}/partitions/{part}/messages?{query}")

    async def _commit_and_check(self, process: str, rng: random.Random, part: int,
                                offset: int) -> None:
        offsets = [{"partition": part, "offset": offset}]
        value = {"topic": TOPIC, "group": f"{GROUP}-{process}", "offsets": offsets}
        await self._op(process, "group-commit", value, rng.choice(self.targets), "POST",
                       f"/v1/topics/{TOPIC}/groups/{value['group']}/offsets",
                       {"offsets": offsets})
        await self._op(process, "group-read", {"topic": TOPIC, "group": value["group"]},
                       rng.choice(self.targets), "GET",
                       f"/v1/topics/{TOPIC}/groups/{value['group']}/offsets"
                       "?consistency=linearizable")

    # -- live subscribers -------------------------------------------------------------------
    async def subscriber(self, worker: int) -> None:
        """Open live subscriptions (SSE) on random nodes, one after another, until stopped."""
        rng = random.Random(self.seed * 1000 + 950 + worker)
        process = f"ts{worker}"
        stream = 0
        while not self.stop.is_set():
            stream += 1
            await self._subscribe_once(process, f"{process}.{stream}", rng.choice(self.targets),
                                       rng.uniform(SUBSCRIBE_STREAM_S_MIN,
                                                   SUBSCRIBE_STREAM_S_MAX))
            await asyncio.sleep(BACKOFF_S)

    async def _subscribe_once(self, process: str, stream: str, target: Target,
                              duration_s: float) -> None:
        """One subscription, recorded as ONE op: ok with every event it delivered (checked
        like reads, plus: offsets of a partition follow each other without a gap)."""
        value = {"topic": TOPIC, "stream": stream, "node": target.node_id}
        inv = self.history.invoke(process, "topic-subscribe", value, target.node_id)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                        sock_read=SUBSCRIBE_READ_TIMEOUT_S)
        events: list[list[Any]] = []
        try:
            async with self.http.session.get(f"{target.url}/v1/subscribe?topics={TOPIC}",
                                             timeout=timeout) as resp:
                if resp.status != 200:
                    kind, code = classify(resp.status, None)
                    self.history.complete(inv, FAIL if kind == OK else kind,
                                          {"status": resp.status, "code": code})
                    return
                end = await self._collect(resp, events, duration_s)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            self.history.complete(inv, FAIL, {"status": None, "error": type(exc).__name__})
            return
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            end = f"{type(exc).__name__}"
        self.history.complete(inv, OK if events or end == "closed" else INFO,
                              {"messages": events, "end": end})

    async def _collect(self, resp: aiohttp.ClientResponse, events: list[list[Any]],
                       duration_s: float) -> str:
        """Append [partition, offset, body] per event until the time is up; how it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration_s
        while loop.time() < deadline and not self.stop.is_set():
            wait_s = min(SUBSCRIBE_POLL_S, max(0.01, deadline - loop.time()))
            try:
                line = await asyncio.wait_for(resp.content.readline(), timeout=wait_s)
            except TimeoutError:
                continue
            if not line:
                return "server_closed"
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: "):])
                if event.get("topic") == TOPIC:
                    events.append([int(event["partition"]), int(event["offset"]),
                                   event.get("body")])
        return "closed"

    # -- final phase ------------------------------------------------------------------------
    async def final_reads(self) -> bool:
        """Read every partition through every node; True if the nodes agreed on watermarks."""
        agreed = await self._settle()
        for target in self.targets:
            for part in range(PARTITIONS):
                await self._read_all(target, part)
        return agreed

    async def _settle(self) -> bool:
        deadline = time.monotonic() + FINAL_SETTLE_S
        while time.monotonic() < deadline:
            marks = [await self._high_watermarks(t) for t in self.targets]
            if None not in marks and len({repr(m) for m in marks}) == 1:
                return True
            await asyncio.sleep(0.3)
        return False

    async def _high_watermarks(self, target: Target) -> list[Any] | None:
        out = await self.http.call("GET", f"{target.url}/v1/topics/{TOPIC}?consistency=local")
        if out.type != OK or not isinstance(out.body, dict):
            return None
        parts = out.body.get("partitions") or []
        return [p.get("high_watermark") for p in parts if isinstance(p, dict)]

    async def _read_all(self, target: Target, part: int) -> None:
        process = f"final-{target.node_id}"
        offset = 0
        for _page in range(100_000):
            out = await self.read(process, target, part, offset, final=True)
            if out.type != OK or not isinstance(out.body, dict):
                return
            low = int(out.body.get("low_watermark") or 0)
            nxt = int(out.body.get("next_offset") or offset)
            if not out.body.get("messages") and low > offset:
                offset = low
                continue
            if nxt <= offset or nxt >= int(out.body.get("high_watermark") or 0):
                return
            offset = nxt
