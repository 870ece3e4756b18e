"""A message's deliveries are ordered by the state's own counter (receive_count) when two
receives were answered in one tick window (same server time) but completed out of order.

Campaign 6, seed 101: a receive invoked first was answered second (its entry committed later);
the checker took it for the earlier delivery and reported a lease_violation although the
first delivery had been nacked. A real violation at equal server time is still reported.
"""

from __future__ import annotations

from typing import Any

from chaos.checker import check_queue
from chaos.history import INVOKE, OK
from tests.chaos.histories import VT_S, H


def _delivery(value: str, receipt: str, count: int, server_ms: int) -> dict[str, Any]:
    return {"value": value, "id": f"id-{value}", "receipt": receipt, "receive_count": count,
            "lease_expires_at": server_ms + VT_S * 1000}


def _overlapping_receives(nack_first: bool) -> H:
    """c0 invokes, c2 invokes; c2 gets delivery 1, (nacks it), then c0 gets delivery 2."""
    h = H().publish(["a"])
    receive = {"max": 10, "vt_s": VT_S}
    h._op("c0", INVOKE, "receive", receive)
    h._op("c2", INVOKE, "receive", receive)
    h._op("c2", OK, "receive", {"messages": [_delivery("a", "r1", 1, 5000)]})
    if nack_first:
        h.nack(["r1"], process="c2")
    h._op("c0", OK, "receive", {"messages": [_delivery("a", "r2", 2, 5000)]})
    h.ack(["r2"], process="c0")
    return h


def _flagged(h: H) -> set[str]:
    return {c for c, a in check_queue(h.ops)["anomalies"].items() if a["count"]}


def test_nacked_then_redelivered_in_one_tick_window_is_not_a_lease_violation() -> None:
    assert _flagged(_overlapping_receives(nack_first=True)) == set()


def test_redelivered_inside_the_lease_at_equal_server_time_is_still_flagged() -> None:
    assert _flagged(_overlapping_receives(nack_first=False)) == {"lease_violation"}
