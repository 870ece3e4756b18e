"""Seed 18's signature: two versions of apply() replayed one log (docs/reliability.md finding 5).

    tar xzf chaos/evidence/seed-18-invalid.tar.gz -C /tmp/s18
    .venv/bin/python -m chaos.evidence.seed18_signature /tmp/s18/history.jsonl

Prints (1) the replicated clock seen in receive answers (lease_expires_at - visibility, minus
the wall time since the run started): under the rule that ran first (time = max of every
proposer's stamp) it jumps +60 s then +96 s within ~30 ms when the node clocks jump; under the
rule the restarted nodes loaded (ticks set time, other entries at most clock_lead_ms_max = 2 s
ahead of the last tick) it climbs 2 s per tick; (2) per second, the acknowledged messages that
the restarted state delivered again (acks the new rule found stale).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

VISIBILITY_MS = 5_000  # the workload receives with vt_s = 5


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def clock_offsets(history: list[dict[str, Any]], t0_ms: int) -> list[tuple[float, str, float]]:
    """(wall s since start, node, replicated clock minus wall clock in s) per receive answer."""
    rows = []
    for op in history:
        msgs = op["value"].get("messages") if op["type"] == "ok" else None
        if op["f"] == "receive" and msgs:
            wall_s = op["time_ns"] / 1e9
            replicated_s = (msgs[0]["lease_expires_at"] - VISIBILITY_MS - t0_ms) / 1000
            rows.append((round(wall_s, 2), str(op["node"]), round(replicated_s - wall_s, 1)))
    return rows


def redelivered_after_ack(history: list[dict[str, Any]], restart_s: float) -> Counter[int]:
    """Per second of the ack: acked messages delivered again after `restart_s`."""
    invokes: dict[str, dict[str, Any]] = {}
    acked: dict[str, float] = {}
    again: Counter[int] = Counter()
    for op in history:
        if op["type"] == "invoke":
            invokes[op["process"]] = op
            continue
        wall_s = op["time_ns"] / 1e9
        if op["f"] == "ack" and op["type"] == "ok":
            stale = set(op["value"].get("stale", []))
            for receipt in invokes[op["process"]]["value"]["receipts"]:
                if receipt not in stale:
                    acked.setdefault(receipt.split(".")[0], wall_s)
        if op["f"] == "receive" and op["type"] == "ok" and wall_s > restart_s:
            for msg in op["value"]["messages"]:
                if msg["id"] in acked and acked[msg["id"]] < restart_s:
                    again[int(acked.pop(msg["id"]))] += 1
    return again


def main(path: Path) -> None:
    history = load(path)
    start = next(op for op in history if op["f"] == "receive" and op["type"] == "ok")
    t0_ms = start["value"]["messages"][0]["lease_expires_at"] - VISIBILITY_MS
    t0_ms -= start["time_ns"] // 1_000_000
    print("wall_s node replicated-minus-wall_s (changes only)")
    last = None
    for wall_s, node, offset_s in clock_offsets(history, t0_ms):
        if last is None or abs(offset_s - last) >= 1.0:
            print(f"{wall_s:7.2f} {node} {offset_s:+.1f}")
            last = offset_s
    print("second-of-ack acked-messages-delivered-again-after-the-power-all-restart")
    for second, count in sorted(redelivered_after_ack(history, 53.0).items()):
        print(f"{second:3d} {count}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
