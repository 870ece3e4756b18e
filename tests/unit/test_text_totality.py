"""apply stays total on text that is not valid Unicode (lone surrogates): a named 400."""

from __future__ import annotations

from typing import Any

import pytest

from storage.errors import KINDS
from storage.state import BrokerState

BAD = "\ud800"


@pytest.mark.parametrize("cmd", [
    {"op": "queue.publish", "queue": "q", "messages": [{"body": "x", "headers": {"k": BAD}}]},
    {"op": "queue.publish", "queue": "q", "messages": [{"body": "x", "headers": {BAD: "v"}}]},
    {"op": "topic.publish", "topic": "t", "messages": [{"body": BAD}]},
    {"op": "topic.publish", "topic": "t", "messages": [{"body": "x", "key": BAD}]},
    {"op": "topic.publish", "topic": "t", "messages": [{"body": "x", "headers": {"k": BAD}}]},
    {"op": "binding.create", "queue": "q", "topic": "#", "headers": {BAD: "v"}, "match": "all"},
])
def test_lone_surrogates_are_invalid_request_and_change_nothing(cmd: dict[str, Any]) -> None:
    state = BrokerState()
    state.apply({"op": "queue.create", "queue": "q", "config": {}}, 1)
    state.apply({"op": "topic.create", "topic": "t", "config": {}}, 1)
    before = state.encode_snapshot()
    result = state.apply(cmd, 1)
    assert result["error"]["code"] == "invalid_request", result
    assert "not valid Unicode" in result["error"]["message"]
    after = state.encode_snapshot()
    assert len(after) == len(before), "a refused command changed the state"


def test_internal_errors_are_not_retryable() -> None:
    """A crashed apply may have changed state: a blind retry could apply a write twice."""
    assert KINDS["internal_error"].retryable is False
