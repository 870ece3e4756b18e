"""Node resource limits: memory high-watermark, requests and long polls in flight, slow bodies."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, http, running_cluster, wait_until

TIGHT = """
[limits]
memory_high_watermark_bytes = 1
long_polls_max = 1
request_read_timeout_s = 1.0
"""


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("tight"), extra_config=TIGHT) as c:
        yield c


def test_memory_high_watermark_refuses_publishes_but_consumers_work(tight: Cluster) -> None:
    url = tight.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/full").status == 201
    r = http("POST", f"{url}/v1/queues/full/messages", {"messages": [{"body": "x"}]})
    assert r.status == 429 and r.body["error"]["code"] == "overloaded", r.body
    assert r.body["error"]["retryable"] is True and r.headers.get("Retry-After")
    assert "memory_high_watermark_bytes" in r.body["error"]["message"]
    assert http("POST", f"{url}/v1/queues/full/receive", {}).status == 200


def test_long_polls_max(tight: Cluster) -> None:
    url = tight.nodes[1].url
    assert http("PUT", f"{url}/v1/queues/lp").status == 201
    assert "raftmq_long_polls_waiting 0.0" in http("GET", f"{url}/metrics").body
    first: dict[str, int] = {}
    t = threading.Thread(target=lambda: first.update(
        status=http("POST", f"{url}/v1/queues/lp/receive", {"wait_s": 3}).status))
    t.start()
    wait_until(lambda: "raftmq_long_polls_waiting 1.0" in http("GET", f"{url}/metrics").body,
               what="one long poll waiting")
    r = http("POST", f"{url}/v1/queues/lp/receive", {"wait_s": 3})
    assert r.status == 429 and r.body["error"]["code"] == "overloaded", r.body
    t.join(timeout=10)
    assert first["status"] == 200, "the poll within the limit is served"


def test_a_slow_body_is_cut_off_with_408(tight: Cluster) -> None:
    node = tight.nodes[2]
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as s:
        s.sendall(b"PUT /v1/queues/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        start = time.monotonic()
        answer = s.recv(4096)
        assert time.monotonic() - start < 8
    assert b" 408 " in answer.split(b"\r\n")[0], answer[:200]
    assert b"request_read_timeout_s" in answer
