"""Receipts name exactly one delivery (API.md: "A receipt names one delivery").

Regressions of fuzzing findings: `storage.queues.parse_receipt` read the two numbers of
"<id>.<delivery>" with `str.isdigit` and `int`, so spellings that were never issued ("01.1",
"1.01", full-width or Arabic-Indic digits) acked the delivery "1.1", and superscript digits
("1.\u00b9": isdigit is true, int fails) raised ValueError out of `apply` (a 500 over HTTP).
"""

from __future__ import annotations

import pytest

from storage.state import BrokerState

ALIASES = ["01.1", "1.01", "\uff11.\uff11", "\u0661.\u0661", "1.\u00b9"]


def delivered(receipt_holder: list[str]) -> BrokerState:
    state = BrokerState()
    state.apply({"op": "queue.create", "queue": "q", "config": {}}, 1)
    state.apply({"op": "queue.publish", "queue": "q", "messages": [{"body": b"x"}]}, 1)
    got = state.apply({"op": "queue.receive", "queue": "q", "max_messages": 1,
                       "visibility_timeout_s": None, "ack": "manual"}, 1)
    receipt_holder.append(got["messages"][0]["receipt"])
    return state


def test_the_issued_receipt_acks() -> None:
    issued: list[str] = []
    state = delivered(issued)
    assert issued == ["1.1"]
    assert state.apply({"op": "queue.ack", "queue": "q", "receipts": issued}, 2) == \
        {"acked": 1, "stale": []}


@pytest.mark.parametrize("alias", ALIASES)
def test_a_receipt_spelled_otherwise_is_stale(alias: str) -> None:
    issued: list[str] = []
    state = delivered(issued)
    assert alias != issued[0]
    result = state.apply({"op": "queue.ack", "queue": "q", "receipts": [alias]}, 2)
    assert result == {"acked": 0, "stale": [alias]}


@pytest.mark.parametrize("op", ["queue.ack", "queue.nack", "queue.visibility"])
def test_apply_does_not_raise_on_superscript_digits(op: str) -> None:
    """apply must never raise (issue 2, defect 5); 'x.\u00b9' must simply be stale."""
    state = BrokerState()
    state.apply({"op": "queue.create", "queue": "q", "config": {}}, 1)
    result = state.apply({"op": op, "queue": "q", "receipts": ["1.\u00b9", "\u00b2.1"],
                          "timeout_s": 1}, 2)
    assert result.get("stale") == ["1.\u00b9", "\u00b2.1"]
