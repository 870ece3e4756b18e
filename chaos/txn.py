"""The transaction workload: consume-transform-produce, exactly once (API.md "Exactly-once").

Feeders publish unique inputs ``x<worker>g<gen>s<seq>m<k>`` to queue ``chaos-in`` (idempotent
producers, as in the queue workload). Transformers receive inputs and, for each batch, send ONE
``POST /v1/transactions`` that acks the batch's receipts on ``chaos-in`` and publishes one output
per input to ``chaos-out``, under the transformer's own producer (id, epoch, seq). An output's
body names its input and the transaction that made it: ``o|<input>|<txn id>``, so the checker can
tell which transaction an output came from. After an unknown outcome the same transaction (same
seq, receipts and outputs) is retried; after a definite failure (the transaction is aborted: it
changed nothing) the seq is free again and the inputs are nacked or left to time out, so they
must be delivered again. A few transactions are aborted on purpose: they carry a receipt that is
already stale (409 ``stale_receipt``). A reader consumes ``chaos-out`` concurrently. After the
heal, `drain` keeps transforming until ``chaos-in`` is empty on every node, then reads
``chaos-out`` until it is empty too.

History ops (checked by chaos.checker.check_txn): ``txn-in-publish``, ``txn-receive``, ``txn``
(value: id, inputs, receipts, outputs, forced), ``txn-nack``, ``txn-out-receive``,
``txn-out-ack``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from chaos.client import Http, Outcome
from chaos.history import FAIL, OK, History
from chaos.workload import BACKOFF_MAX_S, BACKOFF_S, RETIRE_CODES, RETRIES_MAX, Target, until_done

IN_QUEUE = "chaos-in"
OUT_QUEUE = "chaos-out"
VISIBILITY_S = 5
RECEIVE_MAX = 4
WAIT_S = 1
FORCED_ABORT_FRACTION = 0.05
NACK_AFTER_ABORT_FRACTION = 0.5
OUT_SEP = "|"
DRAIN_IDLE_S = 0.3


def output_body(input_value: str, txn_id: str) -> str:
    return f"o{OUT_SEP}{input_value}{OUT_SEP}{txn_id}"


def parse_output(body: Any) -> tuple[str, str] | None:
    """(input, txn id) of an output body, or None when it is not one."""
    parts = str(body).split(OUT_SEP)
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "o" else None


@dataclass
class TxnWorkload:
    http: Http
    history: History
    targets: list[Target]
    seed: int
    feeders: int = 2
    transformers: int = 3
    readers: int = 1
    pace_s: float = 0.01
    drain_timeout_s: float = 90.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False

    # -- helpers ----------------------------------------------------------------------------
    async def _op(self, process: str, f: str, value: dict[str, Any], target: Target,
                  method: str, path: str, body: Any, timeout_s: float | None = None) -> Outcome:
        inv = self.history.invoke(process, f, value, target.node_id)
        out = await self.http.call(method, f"{target.url}{path}", body, timeout_s)
        result = self._ok_value(f, out.body) if out.type == OK else out.short()
        self.history.complete(inv, out.type, result)
        return out

    @staticmethod
    def _ok_value(f: str, body: Any) -> Any:
        body = body if isinstance(body, dict) else {}
        if f in ("txn-receive", "txn-out-receive"):
            return {"messages": [{"value": m.get("body"), "id": m.get("id"),
                                  "receipt": m.get("receipt"),
                                  "receive_count": m.get("receive_count")}
                                 for m in body.get("messages", [])]}
        if f == "txn-in-publish":
            return {"ids": [m.get("id") for m in body.get("messages", [])]}
        if f == "txn":
            return {"acked": body.get("acked"), "duplicate": body.get("duplicate")}
        return body

    async def setup(self) -> bool:
        deadline = time.monotonic() + 30.0
        pending = [IN_QUEUE, OUT_QUEUE]
        while pending and time.monotonic() < deadline:
            for t in self.targets:
                if not pending:
                    break
                out = await self.http.call("PUT", f"{t.url}/v1/queues/{pending[0]}",
                                           {"visibility_timeout_s": VISIBILITY_S})
                if out.type == OK:
                    pending.pop(0)
            await asyncio.sleep(0.2 if pending else 0)
        return not pending

    async def _register(self, pid: str, rng: random.Random) -> int | None:
        delay = BACKOFF_S
        while not self.stop.is_set() or self.draining:
            out = await self.http.call("POST", f"{rng.choice(self.targets).url}/v1/producers",
                                       {"id": pid})
            if out.type == OK and isinstance(out.body, dict):
                return int(out.body["epoch"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        return None

    # -- feeders ----------------------------------------------------------------------------
    async def feeder(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + 300 + worker)
        generation = 0
        while not self.stop.is_set():
            generation += 1
            pid = f"chaos-x{worker}-g{generation}-{self.seed}"
            epoch = await self._register(pid, rng)
            if epoch is None:
                return
            seq = 0
            while not self.stop.is_set():
                values = [f"x{worker}g{generation}s{seq}m{k}" for k in range(rng.randint(1, 3))]
                if not await self._feed(f"x{worker}", pid, epoch, seq, values, rng):
                    break
                seq += 1
                await asyncio.sleep(rng.uniform(0, self.pace_s))

    async def _feed(self, process: str, pid: str, epoch: int, seq: int, values: list[str],
                    rng: random.Random) -> bool:
        body = {"messages": [{"body": v} for v in values],
                "producer": {"id": pid, "epoch": epoch, "seq": seq}}
        value = {"values": values, "producer": pid, "seq": seq}
        return await until_done(
            lambda: self._op(process, "txn-in-publish", value, rng.choice(self.targets),
                             "POST", f"/v1/queues/{IN_QUEUE}/messages", body), self.stop)

    # -- transformers -----------------------------------------------------------------------
    async def transformer(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + 400 + worker)
        state = _Transformer(process=f"t{worker}")
        while not self.stop.is_set() or self.draining:
            if state.epoch is None:
                state.generation += 1
                state.pid = f"chaos-tx{worker}-g{state.generation}-{self.seed}"
                state.epoch, state.seq = await self._register(state.pid, rng), 0
                if state.epoch is None:
                    return
            got = await self._receive(state.process, IN_QUEUE, "txn-receive",
                                      rng.choice(self.targets))
            if not got:
                if self.draining and not await self._exists_anywhere(IN_QUEUE):
                    return
                await asyncio.sleep(BACKOFF_S)
                continue
            await self._transact(state, got, rng)
            await asyncio.sleep(rng.uniform(0, self.pace_s))

    async def _receive(self, process: str, queue: str, f: str,
                       target: Target) -> list[dict[str, Any]]:
        body = {"max_messages": RECEIVE_MAX, "wait_s": WAIT_S,
                "visibility_timeout_s": VISIBILITY_S, "ack": "manual"}
        out = await self._op(process, f, {"queue": queue, "max": RECEIVE_MAX, "vt_s":
                                          VISIBILITY_S}, target, "POST",
                             f"/v1/queues/{queue}/receive", body,
                             timeout_s=self.http.op_timeout_s + WAIT_S)
        if out.type != OK or not isinstance(out.body, dict):
            return []
        msgs: list[dict[str, Any]] = out.body.get("messages", [])
        return msgs

    async def _transact(self, st: _Transformer, got: list[dict[str, Any]],
                        rng: random.Random) -> None:
        assert st.epoch is not None and got
        st.count += 1
        txn_id = f"{st.pid}#{st.seq}#{st.count}"
        inputs = [str(m.get("body")) for m in got]
        receipts = [str(m.get("receipt")) for m in got]
        forced = bool(st.stale) and rng.random() < FORCED_ABORT_FRACTION
        ack_receipts = receipts + (st.stale[:1] if forced else [])
        outputs = [output_body(v, txn_id) for v in inputs]
        body = {"ack": [{"queue": IN_QUEUE, "receipts": ack_receipts}],
                "publish": [{"queue": OUT_QUEUE, "messages": [{"body": o} for o in outputs]}],
                "producer": {"id": st.pid, "epoch": st.epoch, "seq": st.seq}}
        value = {"txn": txn_id, "inputs": inputs, "receipts": receipts, "outputs": outputs,
                 "forced": forced, "producer": st.pid, "seq": st.seq}
        out = await self._until_definite(st.process, value, body, rng)
        if out.type == OK:
            st.seq += 1
            st.stale = receipts  # acked now: stale from here on (a forced abort uses one)
            return
        if out.type == FAIL and out.code in RETIRE_CODES:
            st.epoch = None
        elif out.type != FAIL:
            st.epoch = None  # unknown after every retry: a new producer, never reuse the seq
        if rng.random() < NACK_AFTER_ABORT_FRACTION:
            await self._op(st.process, "txn-nack", {"queue": IN_QUEUE, "receipts": receipts},
                           rng.choice(self.targets), "POST", f"/v1/queues/{IN_QUEUE}/nack",
                           {"receipts": receipts, "delay_s": 0})

    async def _until_definite(self, process: str, value: dict[str, Any], body: dict[str, Any],
                              rng: random.Random) -> Outcome:
        """Send the transaction; retry the SAME one after an unknown outcome or 503."""
        delay = BACKOFF_S
        out = Outcome(FAIL, None, "not sent")
        for _attempt in range(RETRIES_MAX):
            out = await self._op(process, "txn", value, rng.choice(self.targets), "POST",
                                 "/v1/transactions", body)
            if out.type == OK or (out.type == FAIL and out.status is not None
                                  and out.status < 500):
                return out
            if self.stop.is_set() and not self.draining and out.type == FAIL:
                return out
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        return out

    # -- output reader ----------------------------------------------------------------------
    async def reader(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + 600 + worker)
        process = f"o{worker}"
        while not self.stop.is_set() or self.draining:
            target = rng.choice(self.targets)
            got = await self._receive(process, OUT_QUEUE, "txn-out-receive", target)
            if got:
                receipts = [str(m.get("receipt")) for m in got]
                await self._op(process, "txn-out-ack", {"queue": OUT_QUEUE,
                                                        "receipts": receipts},
                               rng.choice(self.targets), "POST",
                               f"/v1/queues/{OUT_QUEUE}/ack", {"receipts": receipts})
            elif self.draining and not await self._exists_anywhere(IN_QUEUE) and \
                    not await self._exists_anywhere(OUT_QUEUE):
                return
            else:
                await asyncio.sleep(BACKOFF_S)

    # -- final phase ------------------------------------------------------------------------
    async def _exists_anywhere(self, queue: str) -> bool:
        """Does any node still report messages in `queue` (or not answer)?"""
        for t in self.targets:
            out = await self.http.call("GET", f"{t.url}/v1/queues/{queue}")
            if out.type != OK or not isinstance(out.body, dict):
                return True
            stats = out.body.get("stats", {})
            if sum(int(stats.get(k) or 0) for k in ("ready", "in_flight", "delayed")):
                return True
        return False

    async def drain(self) -> bool:
        """Transform and read until both queues are empty on every node (or the timeout)."""
        self.draining = True
        tasks = [asyncio.create_task(self.transformer(100 + i)) for i in range(2)]
        tasks += [asyncio.create_task(self.reader(100))]
        _done, pending = await asyncio.wait(tasks, timeout=self.drain_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.draining = False
        empty = not (await self._exists_anywhere(IN_QUEUE)
                     or await self._exists_anywhere(OUT_QUEUE))
        self.history.nemesis("note", {"txn_drained": empty})
        return empty


@dataclass
class _Transformer:
    process: str
    generation: int = 0
    pid: str = ""
    epoch: int | None = None
    seq: int = 0
    count: int = 0
    stale: list[str] = field(default_factory=list)
