"""Node resource limits: memory high-watermark, requests and long polls in flight, slow bodies,
connections per node, and what aiohttp's HTTP parser refuses (answered in API.md's shape)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, http, running_cluster, wait_until

TIGHT = """
[limits]
memory_high_watermark_bytes = 1
long_polls_max = 1
request_read_timeout_s = 1.0
connections_max = 8
gzip_answer_bytes_min = 1024
"""
CONNECTIONS_MAX = 8


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


# -- connections_max ------------------------------------------------------------------------------
def keepalive_get(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One keep-alive request on an open connection; the status line of the answer."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer.split(b"\r\n")[0]


def served_connection(port: int) -> socket.socket | None:
    """A new connection on which one request was answered 200, kept open; None if refused."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if b" 200 " in keepalive_get(sock):
            return sock
    except OSError:
        pass
    sock.close()
    return None


def refused(port: int) -> bool:
    """The node closes a new connection at once, before any answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(4096) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def test_connections_past_connections_max_are_closed_at_accept(tight: Cluster) -> None:
    node = tight.nodes[0]
    held: list[socket.socket] = []
    try:
        for _ in range(CONNECTIONS_MAX):  # polled: an earlier test's connection may be closing
            held.append(wait_until(lambda: served_connection(node.http_port), timeout_s=10,
                                   what="a connection within connections_max to be served"))
        assert refused(node.http_port), "connection number connections_max + 1 must be closed"
        try:
            status = http("GET", f"{node.url}/healthz", timeout_s=10).status
        except (urllib.error.URLError, ConnectionError) as exc:
            status = -1
            print("client error past the limit:", exc)
        assert status == -1, "an ordinary client is refused too"
        assert all(b" 200 " in keepalive_get(sock) for sock in held), "held ones keep working"
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: http("GET", f"{node.url}/healthz", timeout_s=5).status == 200,
               what="clients to be served again once connections closed")
    scrape = http("GET", f"{node.url}/metrics").body
    refused_total = [line for line in scrape.splitlines()
                     if line.startswith("raftmq_http_connections_refused_total ")]
    assert refused_total and float(refused_total[0].split()[1]) >= 2, refused_total
    assert not refused(node.http_port), "a fresh connection is served, not closed"


# -- what aiohttp's parser refuses ----------------------------------------------------------------
RAW_REFUSED = {
    "bad request line": b"GET\x00 / HTTP/1.1\r\nHost: x\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "request line too long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header too long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000
    + b"\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n",
    "bad chunk size": b"POST /v1/queues/q/messages HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunked and content-length": b"POST /v1/queues/q/messages HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad header name": b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
}


def raw_exchange(port: int, data: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send raw bytes; return (status line, headers, body) of the node's whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode().strip()
               for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize("case", sorted(RAW_REFUSED))
def test_requests_the_http_parser_refuses_get_the_json_error_shape(
    tight: Cluster, case: str
) -> None:
    node = tight.nodes[1]
    status, headers, body = raw_exchange(node.http_port, RAW_REFUSED[case])
    assert status.split(b" ")[1] == b"400", (case, status, body[:200])
    assert headers["content-type"].startswith("application/json"), (case, headers)
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_request" and error["retryable"] is False, error
    assert "malformed HTTP request" in error["message"], error
    assert headers.get("x-raftmq-node") == node.id
    assert http("GET", f"{node.url}/healthz").status == 200, "the node keeps serving"


def test_parser_refusal_never_echoes_header_bytes(tight: Cluster) -> None:
    secret = "tok-" + "s" * 40
    data = (f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\x01\r\n"
            f"X-Big: {'b' * 9000}\r\n\r\n").encode()
    status, _, body = raw_exchange(tight.nodes[2].http_port, data)
    assert b" 400 " in status and secret.encode() not in body


def get_accepting_gzip(url: str) -> tuple[str | None, bytes]:
    """(Content-Encoding, raw body) of a GET that accepts gzip, as most HTTP clients send."""
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.headers.get("Content-Encoding"), resp.read()


def test_answers_from_gzip_answer_bytes_min_up_are_gzipped_for_clients_that_accept_it(
        tight: Cluster) -> None:
    coding, raw = get_accepting_gzip(f"{tight.nodes[0].url}/v1/openapi.json")
    assert coding == "gzip"
    assert len(json.loads(gzip.decompress(raw))["paths"]) > 10
    coding, raw = get_accepting_gzip(f"{tight.nodes[0].url}/healthz")  # below 1024 bytes
    assert coding is None and len(raw) < 1024
