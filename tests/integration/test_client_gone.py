"""A client that goes away mid-request is not a server error: no traceback, no 500 logged, and
the node keeps serving (chaos runs drop subscribers and reset connections all the time)."""

from __future__ import annotations

import socket
import struct

from tests.support.cluster import Cluster, http, wait_until


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed or killed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_dropped_subscriber_and_a_reset_body_are_not_handler_crashes(
        shared_cluster: Cluster) -> None:
    node = shared_cluster.nodes[0]
    assert http("PUT", f"{node.url}/v1/topics/gone", {"partitions": 1}).status in (200, 201)
    before = node.log_path.read_text(errors="replace")
    # 1. a live subscriber that vanishes while messages are being pushed to it
    sub = socket.create_connection(("127.0.0.1", node.http_port), timeout=10)
    sub.sendall(b"GET /v1/subscribe?topics=gone HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 200 " in sub.recv(4096).split(b"\r\n")[0]
    reset(sub)
    for i in range(20):
        assert http("POST", f"{node.url}/v1/topics/gone/messages",
                    {"messages": [{"body": str(i)}]}).status == 201
    # 2. a publish whose body never finishes: the connection is reset mid-body
    body = b'{"messages": [{"body": "' + b"x" * 1000
    sock = socket.create_connection(("127.0.0.1", node.http_port), timeout=10)
    sock.sendall(b"POST /v1/queues/gone/messages HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + body)
    reset(sock)
    wait_until(lambda: node.log_path.read_text(errors="replace").count("event=client_gone")
               > before.count("event=client_gone"), timeout_s=20,
               what="the node to notice the vanished clients")
    assert http("GET", f"{node.url}/healthz").status == 200
    new = node.log_path.read_text(errors="replace")[len(before):]
    assert "handler_crash" not in new and "Traceback" not in new, new[-3000:]
