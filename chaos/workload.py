"""The queue workload: idempotent producers and competing consumers against every node.

Producers publish unique values (``w<worker>g<generation>s<seq>m<k>``) with
``"producer": {id, epoch, seq}``; after an unknown outcome they retry the same seq with the same
values (the broker must deduplicate), after a definite failure they retry too; a fenced /
unknown / out-of-order answer retires the producer (a new id, seq 0). Consumers receive with a
fixed visibility timeout and ack most deliveries, nack some and drop a few (their lease runs
out). After the faults are healed, `drain` receives and acks until every node reports the queue
empty, then `final_state` records each node's view for the divergence check.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.client import Http, Outcome
from chaos.history import FAIL, INFO, OK, History

QUEUE = "chaos"
RETIRE_CODES = ("producer_fenced", "producer_unknown", "out_of_order_sequence")
RETRIES_MAX = 20
BACKOFF_S = 0.1
BACKOFF_MAX_S = 1.0
DRAIN_IDLE_S = 0.2


@dataclass
class WorkloadConfig:
    producers: int = 4
    consumers: int = 4
    visibility_timeout_s: int = 5
    batch_max: int = 3
    receive_max: int = 5
    wait_s: int = 1
    nack_fraction: float = 0.05
    drop_fraction: float = 0.03
    pace_s: float = 0.01
    drain_timeout_s: float = 90.0
    queue: str = QUEUE
    durability: str = "fsync"  # the queue's (docs/durability.md)


@dataclass
class Target:
    node_id: str
    url: str


async def until_done(attempt: Callable[[], Awaitable[Outcome]], stop: asyncio.Event) -> bool:
    """Retry one exactly-once publish (the same producer seq each time) with backoff until it
    is ok. False when the producer is retired (fenced, unknown, out of order: the caller
    registers a new one), on a failure once the run is stopping, or after RETRIES_MAX."""
    delay = BACKOFF_S
    for _attempt in range(RETRIES_MAX):
        out = await attempt()
        if out.type == OK:
            return True
        if out.type == FAIL and (out.code in RETIRE_CODES or stop.is_set()):
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)
    return False


@dataclass
class Workload:
    http: Http
    history: History
    targets: list[Target]
    cfg: WorkloadConfig
    seed: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    # -- helpers ----------------------------------------------------------------------------
    def _url(self, target: Target, path: str) -> str:
        return f"{target.url}{path}"

    async def _op(self, process: str, f: str, value: dict[str, Any], target: Target,
                  method: str, path: str, body: Any,
                  timeout_s: float | None = None) -> Outcome:
        inv = self.history.invoke(process, f, value, target.node_id)
        out = await self.http.call(method, self._url(target, path), body, timeout_s)
        result = self._ok_value(f, out.body) if out.type == OK else out.short()
        self.history.complete(inv, out.type, result)
        if out.code == "queue_not_found":
            await self.ensure_queue(target)
        return out

    @staticmethod
    def _ok_value(f: str, body: Any) -> Any:
        body = body if isinstance(body, dict) else {}
        if f == "publish":
            return {"ids": [m.get("id") for m in body.get("messages", [])],
                    "duplicate": body.get("duplicate")}
        if f == "receive":
            return {"messages": [
                {"value": m.get("body"), "id": m.get("id"), "receipt": m.get("receipt"),
                 "receive_count": m.get("receive_count"),
                 "lease_expires_at": m.get("lease_expires_at")}
                for m in body.get("messages", [])]}
        return body

    async def ensure_queue(self, target: Target) -> Outcome:
        cfg = {"visibility_timeout_s": self.cfg.visibility_timeout_s,
               "durability": self.cfg.durability}
        return await self.http.call("PUT", self._url(target, f"/v1/queues/{self.cfg.queue}"),
                                    cfg)

    # -- producers --------------------------------------------------------------------------
    async def producer(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        generation = 0
        while not self.stop.is_set():
            generation += 1
            pid = f"chaos-w{worker}-g{generation}-{self.seed}"
            epoch = await self._register(pid, rng)
            if epoch is None:
                continue
            await self._produce(worker, generation, pid, epoch, rng)

    async def _register(self, pid: str, rng: random.Random) -> int | None:
        delay = BACKOFF_S
        while not self.stop.is_set():
            target = rng.choice(self.targets)
            out = await self.http.call("POST", self._url(target, "/v1/producers"), {"id": pid})
            if out.type == OK and isinstance(out.body, dict):
                return int(out.body["epoch"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        return None

    async def _produce(self, worker: int, gen: int, pid: str, epoch: int,
                       rng: random.Random) -> None:
        process = f"w{worker}"
        seq = 0
        while not self.stop.is_set():
            count = rng.randint(1, self.cfg.batch_max)
            values = [f"w{worker}g{gen}s{seq}m{k}" for k in range(count)]
            if not await self._publish_until_done(process, pid, epoch, seq, values, rng):
                return  # retired: the caller registers a new producer
            seq += 1
            await asyncio.sleep(rng.uniform(0, self.cfg.pace_s))

    async def _publish_until_done(self, process: str, pid: str, epoch: int, seq: int,
                                  values: list[str], rng: random.Random) -> bool:
        body = {"messages": [{"body": v} for v in values],
                "producer": {"id": pid, "epoch": epoch, "seq": seq}}
        value = {"values": values, "producer": pid, "epoch": epoch, "seq": seq}
        return await until_done(
            lambda: self._op(process, "publish", value, rng.choice(self.targets), "POST",
                             f"/v1/queues/{self.cfg.queue}/messages", body), self.stop)

    # -- consumers --------------------------------------------------------------------------
    async def consumer(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + worker)
        process = f"c{worker}"
        while not self.stop.is_set():
            target = rng.choice(self.targets)
            got = await self._receive(process, target, rng.randint(1, self.cfg.receive_max))
            if got is None:
                await asyncio.sleep(BACKOFF_S)
                continue
            acks: list[str] = []
            nacks: list[str] = []
            for m in got:
                roll = rng.random()
                if roll < self.cfg.drop_fraction:
                    continue
                (nacks if roll < self.cfg.drop_fraction + self.cfg.nack_fraction
                 else acks).append(m["receipt"])
            await self._settle(process, rng.choice(self.targets), acks, nacks)
            await asyncio.sleep(rng.uniform(0, self.cfg.pace_s))

    async def _receive(self, process: str, target: Target, max_messages: int,
                       ) -> list[dict[str, Any]] | None:
        body = {"max_messages": max_messages, "wait_s": self.cfg.wait_s,
                "visibility_timeout_s": self.cfg.visibility_timeout_s, "ack": "manual"}
        value = {"max": max_messages, "vt_s": self.cfg.visibility_timeout_s}
        out = await self._op(process, "receive", value, target, "POST",
                             f"/v1/queues/{self.cfg.queue}/receive", body,
                             timeout_s=self.http.op_timeout_s + self.cfg.wait_s)
        if out.type != OK or not isinstance(out.body, dict):
            return None
        msgs: list[dict[str, Any]] = out.body.get("messages", [])
        return msgs

    async def _settle(self, process: str, target: Target, acks: list[str],
                      nacks: list[str]) -> None:
        if acks:
            await self._op(process, "ack", {"receipts": acks}, target, "POST",
                           f"/v1/queues/{self.cfg.queue}/ack", {"receipts": acks})
        if nacks:
            await self._op(process, "nack", {"receipts": nacks}, target, "POST",
                           f"/v1/queues/{self.cfg.queue}/nack", {"receipts": nacks,
                                                                 "delay_s": 0})

    # -- final phase ------------------------------------------------------------------------
    async def drain(self) -> bool:
        """Receive and ack on every node until every node reports the queue empty."""
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            got_any = await self._drain_round(rounds)
            if not got_any:
                if await self._all_empty():
                    return True
                await asyncio.sleep(DRAIN_IDLE_S)  # leases of dropped deliveries run out
        return False

    async def _drain_round(self, rounds: int) -> bool:
        async def one(i: int, target: Target) -> bool:
            process = f"drain{i}"
            got = await self._receive(process, target, 100)
            if got:
                await self._settle(process, target, [m["receipt"] for m in got], [])
            return bool(got)

        results = await asyncio.gather(*(one(i, t) for i, t in enumerate(self.targets)))
        return any(results)

    async def _all_empty(self) -> bool:
        for target in self.targets:
            stats = await self.queue_stats(target)
            if stats is None:
                return False
            if sum(int(stats.get(k) or 0) for k in ("ready", "in_flight", "delayed")):
                return False
        return True

    async def queue_stats(self, target: Target) -> dict[str, Any] | None:
        out = await self.http.call("GET", self._url(target, f"/v1/queues/{self.cfg.queue}"))
        if out.type != OK or not isinstance(out.body, dict):
            return None
        stats: dict[str, Any] = out.body.get("stats", {})
        return stats

    async def final_state(self, settle_timeout_s: float = 30.0) -> dict[str, Any]:
        """Each node's queue stats, once they agree (a lagging node gets time to catch up)."""
        deadline = time.monotonic() + settle_timeout_s
        while True:
            state = {t.node_id: await self.queue_stats(t) for t in self.targets}
            views = {repr(sorted(s.items())) if s else None for s in state.values()}
            if (len(views) == 1 and None not in views) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        self.history.nemesis("note", {"final_queue_state": state})
        return state

    async def applied_index(self, target: Target) -> int | None:
        out = await self.http.call("GET", self._url(target, "/v1/cluster"))
        if out.type != OK or not isinstance(out.body, dict):
            return None
        value = out.body.get("applied_index")
        return None if value is None else int(value)


__all__ = ["FAIL", "INFO", "OK", "Target", "Workload", "WorkloadConfig"]
