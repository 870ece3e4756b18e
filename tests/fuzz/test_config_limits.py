"""A cluster file's [limits] table is operator input: a wrong type or a negative value must stop
the node at start with a clear message, not surface later as 500s on every request that meets the
limit (found by fuzzing the settings; node/server.py limits_from passes the values unchecked)."""

from __future__ import annotations

from typing import Any

import pytest

from node.config import ClusterConfig, NodeSpec
from node.server import limits_from

NODES = (NodeSpec("n1", "127.0.0.1:1", "127.0.0.1:2"),)


def test_unknown_limit_names_are_refused() -> None:
    with pytest.raises(SystemExit, match="unknown keys"):
        limits_from(ClusterConfig(name="t", nodes=NODES, limits={"wait_max": 1}))


@pytest.mark.parametrize("limits", [{"wait_s_max": "20"}, {"body_bytes_max": -5},
                                    {"batch_messages_max": 0}, {"headers_max": True},
                                    {"request_read_timeout_s": [1]}])
def test_bad_limit_values_stop_the_node_at_start(limits: dict[str, Any]) -> None:
    with pytest.raises(SystemExit):
        limits_from(ClusterConfig(name="t", nodes=NODES, limits=limits))
