"""Limits set in the cluster file's [limits] table are enforced with the documented errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, http, running_cluster

SMALL_LIMITS = """
[limits]
request_bytes_max = 20000
body_bytes_max = 1000
batch_messages_max = 5
headers_max = 2
queues_max = 3
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("limits"), extra_config=SMALL_LIMITS) as c:
        yield c


def test_configured_limits_are_enforced_with_named_errors(small: Cluster) -> None:
    url = small.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/q").status == 201
    cases = [
        ({"messages": [{"body": "x" * 1001}]}, 413, "message_too_large"),
        ({"messages": [{"body": "x"}] * 6}, 413, "batch_too_large"),
        ({"messages": [{"body": "x", "headers": {"a": "1", "b": "2", "c": "3"}}]}, 400,
         "invalid_request"),
        ({"messages": [{"body": "x" * 900}] * 5, "pad": "y" * 20000}, 413, "request_too_large"),
    ]
    for body, status, code in cases:
        r = http("POST", f"{url}/v1/queues/q/messages", body)
        assert r.status == status and r.body["error"]["code"] == code, r.body
    ok = http("POST", f"{url}/v1/queues/q/messages", {"messages": [{"body": "x" * 1000}] * 5})
    assert ok.status == 201, "exactly at the limits is allowed"
    info = http("GET", f"{url}/v1/queues/q?consistency=linearizable").body
    assert info["stats"]["published_total"] == 5, "rejected requests changed nothing"


def test_queues_max(small: Cluster) -> None:
    url = small.nodes[1].url
    existing = len(http("GET", f"{url}/v1/queues?consistency=linearizable").body["queues"])
    for i in range(3 - existing):
        assert http("PUT", f"{url}/v1/queues/extra-{i}").status == 201
    r = http("PUT", f"{url}/v1/queues/one-too-many")
    assert r.status in (409, 429), r.body
    assert "queues_max" in r.body["error"]["message"]
