"""Re-check queue histories with deliveries of one message ordered by the state's own counter.

    .venv/bin/python -m chaos.evidence.recheck chaos-out/c6/seed-101/history.jsonl ...

`chaos.checker._check_redeliveries` orders the deliveries of a message by (server_ms, op
index). Two receives answered within one tick window carry the same server_ms, so a receive
invoked first but answered second (its entry committed later) is taken for the earlier
delivery: seed 101 of campaign 6 shows receive_count 2 "before" receive_count 1 and reports a
lease_violation although the nack of delivery 1 had succeeded. receive_count is the state's
order of a message's deliveries; this script re-runs check_queue with it as the tie-break and
prints both verdicts. (Fixed in chaos/checker.py since: sort key (server_ms, receive_count,
op_index); this script shows the difference on histories checked before the fix.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from chaos import checker, history

Fn = Any


def _sorted_by_state_counter(original: Fn) -> Fn:
    real_sorted = sorted

    def patched(facts: Any, found: Any) -> None:
        def state_order(items: Any, key: Any = None) -> list[Any]:
            if key is not None and items and isinstance(items[0], checker.Delivery):
                return real_sorted(items, key=lambda d: (d.server_ms, d.receive_count,
                                                         d.op_index))
            return real_sorted(items, key=key)

        checker.__dict__["sorted"] = state_order  # module global shadows the builtin
        try:
            original(facts, found)
        finally:
            del checker.__dict__["sorted"]

    return patched


def recheck(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    ops = history.load(path)
    before = checker.check_queue(ops)["anomalies"]
    original = checker._check_redeliveries
    checker._check_redeliveries = _sorted_by_state_counter(original)
    try:
        after = checker.check_queue(ops)["anomalies"]
    finally:
        checker._check_redeliveries = original
    return before, after


def main(paths: list[str]) -> None:
    for p in paths:
        before, after = (_counts(a) for a in recheck(Path(p)))
        print(p, "as checked:", json.dumps(before), "by receive_count:", json.dumps(after))


def _counts(anomalies: dict[str, Any]) -> dict[str, int]:
    return {k: v["count"] for k, v in anomalies.items() if v["count"]}


if __name__ == "__main__":
    main(sys.argv[1:])
