"""The history of a run: every client op as an invoke and a completion, plus nemesis events.

A record is a dict ``{index, time_ns, process, type, f, value, node}``:

* ``type`` is ``invoke``, then ``ok`` (the broker acknowledged), ``fail`` (the broker
  guarantees no effect: a 4xx before proposing, or 503 ``no_leader``/``unavailable``) or
  ``info`` (unknown outcome: timeout, connection reset, 504 ``commit_timeout``, other 5xx).
* ``time_ns`` is monotonic, relative to the start of the run.
* nemesis events have ``process == "nemesis"`` and ``type == "info"``; ``f`` is ``start`` or
  ``stop`` and ``value`` says which fault and which nodes.

Histories are written as JSONL (one record a line) so they can be read back and re-checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Op = dict[str, Any]

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
NEMESIS = "nemesis"
COMPLETIONS = (OK, FAIL, INFO)


class History:
    """Append-only, in memory; `dump` writes JSONL."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._t0_ns = time.monotonic_ns()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self._t0_ns

    def _add(self, process: str, type_: str, f: str, value: Any, node: str | None) -> Op:
        op: Op = {
            "index": len(self.ops),
            "time_ns": self.now_ns(),
            "process": process,
            "type": type_,
            "f": f,
            "value": value,
            "node": node,
        }
        self.ops.append(op)
        return op

    def invoke(self, process: str, f: str, value: Any, node: str | None = None) -> Op:
        return self._add(process, INVOKE, f, value, node)

    def complete(self, invoke: Op, type_: str, value: Any) -> Op:
        assert invoke["type"] == INVOKE, invoke
        assert type_ in COMPLETIONS, type_
        return self._add(invoke["process"], type_, invoke["f"], value, invoke["node"])

    def nemesis(self, f: str, value: Any) -> Op:
        assert f in ("start", "stop", "note"), f
        return self._add(NEMESIS, INFO, f, value, None)

    def dump(self, path: Path) -> None:
        with path.open("w") as fh:
            for op in self.ops:
                fh.write(json.dumps(op, separators=(",", ":")) + "\n")


def load(path: Path) -> list[Op]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pairs(ops: Iterable[Op]) -> list[tuple[Op, Op | None]]:
    """Match each client invoke with its completion (None if the run ended first)."""
    open_by_process: dict[str, Op] = {}
    result: list[tuple[Op, Op | None]] = []
    slot: dict[int, int] = {}
    for op in ops:
        if op["process"] == NEMESIS:
            continue
        if op["type"] == INVOKE:
            assert op["process"] not in open_by_process, f"process {op['process']} overlaps"
            open_by_process[op["process"]] = op
            slot[op["index"]] = len(result)
            result.append((op, None))
        else:
            inv = open_by_process.pop(op["process"])
            result[slot[inv["index"]]] = (inv, op)
    return result
