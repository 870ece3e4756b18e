"""Encrypted Raft frames (issue 9): pysyncobj's own TcpServer/TcpConnection on loopback, made
SecureConnections exactly as DurableTransport does, with the bytes on the wire recorded by a
proxy. What a node relies on: messages arrive intact and in order; nobody without the secret
gets a frame in; a recorded frame is refused on any connection; a flipped byte is refused; a
message body never crosses in clear."""

from __future__ import annotations

import contextlib
import importlib
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.tcp_server import TcpServer

from replication import raft_crypto
from replication.patches import FrameCodec
from replication.transport import SecureConnection, secure_connection
from tests.support.raft_wire import LENGTH, closed_by_peer, handshake, recv_frame, send_frame

SECRET = b"0123456789abcdef-cluster-secret"
BODY = b"PLAINTEXT-BODY-MARKER-"
BUFFER_BYTES = 1 << 20
TIMEOUT_S = 10.0


@pytest.fixture(autouse=True)
def frame_counter(monkeypatch: pytest.MonkeyPatch) -> FrameCodec:
    """The rejected-frames counter lives on the installed frame codec (as in a node)."""
    codec = FrameCodec(None)
    monkeypatch.setattr(importlib.import_module("pysyncobj.tcp_connection"), "zlib", codec)
    return codec


class Node:
    """A Raft port: pysyncobj's TcpServer whose connections are secured as acceptors."""

    def __init__(self, secret: bytes = SECRET) -> None:
        self.poller = createPoller("auto")
        self.master = raft_crypto.master_key(secret)
        self.received: list[Any] = []
        self.accepted: list[Any] = []
        self.server = TcpServer(self.poller, "127.0.0.1", 0, onNewConnection=self._on_new,
                                sendBufferSize=BUFFER_BYTES, recvBufferSize=BUFFER_BYTES,
                                connectionTimeout=TIMEOUT_S)
        self.server.bind()
        self.port = self.server._TcpServer__socket.getsockname()[1]
        self._stop = threading.Event()

    def _on_new(self, conn: Any) -> None:
        secure_connection(conn, self.master, raft_crypto.ROLE_ACCEPTOR)
        conn.setOnMessageReceivedCallback(self.received.append)
        self.accepted.append(conn)

    def connect(self, port: int, on_connected: Callable[[Any], None]) -> Any:
        conn = TcpConnection(poller=self.poller, timeout=TIMEOUT_S,
                             sendBufferSize=BUFFER_BYTES, recvBufferSize=BUFFER_BYTES)
        secure_connection(conn, self.master, raft_crypto.ROLE_CONNECTOR)
        conn.setOnConnectedCallback(lambda: on_connected(conn))
        conn.setOnMessageReceivedCallback(self.received.append)
        assert conn.connect("127.0.0.1", port)
        return conn

    def pump_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.poller.poll(0.01)

    @contextmanager
    def serving(self) -> Iterator[Node]:
        """Poll in a thread while the test talks to the port with a raw socket."""
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(TIMEOUT_S)
            self.server.unbind()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.poller.poll(0.01)


class Proxy:
    """Forwards one TCP connection to `port` and records what the connector sent."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()  # connector -> acceptor, as on the wire
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = [self.listener]
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self.socks += [client, upstream]
        for src, dst, record in ((client, upstream, True), (upstream, client, False)):
            pipe = threading.Thread(target=self._pipe, args=(src, dst, record), daemon=True)
            pipe.start()
            self.threads.append(pipe)

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if record:
                    self.sent += chunk
                dst.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):  # wakes the threads blocked in recv/accept
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(TIMEOUT_S)


def message(i: int, size: int) -> dict[str, Any]:
    body = BODY + str(i).encode() + b"." * size
    return {"type": "append_entries", "term": 3, "entries": [(body, i, 3)]}


def record_session(node: Node, client: Node, messages: list[dict[str, Any]]) -> bytes:
    """Send `messages` from `client` to `node` through a proxy; return the recorded bytes."""
    proxy = Proxy(node.port)
    try:
        conn = client.connect(proxy.port, lambda c: [c.send(m) for m in messages])
        pump_both(node, client, lambda: len(node.received) == len(messages), "delivery")
        conn.disconnect()
    finally:
        proxy.close()
    return bytes(proxy.sent)


def pump_both(a: Node, b: Node, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        a.poller.poll(0.005)
        b.poller.poll(0.005)


# -- the session primitives -----------------------------------------------------------------------
def pair(secret_c: bytes = SECRET, secret_a: bytes = SECRET) -> tuple[Any, Any]:
    hello_c = raft_crypto.make_hello(raft_crypto.ROLE_CONNECTOR)
    hello_a = raft_crypto.make_hello(raft_crypto.ROLE_ACCEPTOR)
    c = raft_crypto.derive_session(raft_crypto.master_key(secret_c), hello_c, hello_a)
    a = raft_crypto.derive_session(raft_crypto.master_key(secret_a), hello_a, hello_c)
    return c, a


def test_session_frames_open_once_in_order_and_hide_the_plaintext() -> None:
    c, a = pair()
    a.check_finished(c.finished())
    frames = [c.seal(BODY + bytes([i])) for i in range(3)]
    assert all(BODY not in f and len(f) == len(BODY) + 1 + raft_crypto.TAG_BYTES for f in frames)
    assert a.open(frames[0]) == BODY + b"\x00"
    with pytest.raises(raft_crypto.FrameRejected):
        a.open(frames[0])  # replayed: the counter moved on


def test_directions_and_connections_have_their_own_keys() -> None:
    c1, a1 = pair()
    c2, a2 = pair()
    for session in (c1, a1, c2, a2):
        session.finished()
    frame_c1 = c1.seal(b"x")
    with pytest.raises(raft_crypto.FrameRejected):
        a2.open(frame_c1)  # same secret, same counter, another connection
    with pytest.raises(raft_crypto.FrameRejected):
        c1.open(a1.seal(b"y")[:-1] + b"\x00")  # truncated/altered tag


def test_reflected_or_foreign_hello_is_refused() -> None:
    master = raft_crypto.master_key(SECRET)
    hello_c = raft_crypto.make_hello(raft_crypto.ROLE_CONNECTOR)
    for bad in (hello_c, b"RMQ\x01" + hello_c[4:], hello_c[:-1]):
        with pytest.raises(raft_crypto.FrameRejected, match="bad_hello"):
            raft_crypto.derive_session(master, raft_crypto.make_hello(b"c"), bad)


# -- real pysyncobj connections -------------------------------------------------------------------
@pytest.mark.parametrize("size", [300, 60_000])
def test_messages_arrive_in_order_and_no_body_crosses_in_clear(size: int) -> None:
    node, client = Node(), Node()
    messages = [message(i, size) for i in range(20)]
    wire = record_session(node, client, messages)
    assert node.received == messages, "every message, intact and in order"
    assert wire.startswith(LENGTH.pack(raft_crypto.HELLO_BYTES) + raft_crypto.HELLO_MAGIC)
    assert BODY not in wire and b"append_entries" not in wire, "plaintext on the wire"
    assert len(wire) > 20 * size, "the bodies did cross, encrypted"


def test_both_directions_carry_messages(frame_counter: FrameCodec) -> None:
    node, client = Node(), Node()
    conn = client.connect(node.port, lambda c: c.send("127.0.0.1:1"))
    pump_both(node, client, lambda: node.received == ["127.0.0.1:1"], "the address")
    node.accepted[0].send({"type": "response_vote", "term": 1})
    pump_both(node, client, lambda: len(client.received) == 1, "the reply")
    assert client.received == [{"type": "response_vote", "term": 1}]
    assert isinstance(conn, SecureConnection) and frame_counter.rejected_frames == 0


def test_recorded_connection_replayed_on_a_new_one_is_refused(frame_counter: FrameCodec) -> None:
    node, client = Node(), Node()
    wire = record_session(node, client, [message(i, 300) for i in range(5)])
    before = len(node.received)
    with node.serving(), socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(wire)
        assert closed_by_peer(sock, TIMEOUT_S), "the node must drop the replaying connection"
    assert len(node.received) == before, "nothing of the replay was delivered"
    assert frame_counter.rejected_frames == 1


@pytest.mark.parametrize("attack", ["replay", "reorder", "flip_body", "flip_tag", "drop"])
def test_tampered_frame_on_a_live_connection_is_refused(
    attack: str, frame_counter: FrameCodec
) -> None:
    node = Node()
    with node.serving(), socket.create_connection(("127.0.0.1", node.port)) as sock:
        session = handshake(sock, SECRET)
        one, two, three = (session.seal(pickle.dumps(m, 5)) for m in ("one", "two", "three"))
        send_frame(sock, one)
        wait_for(lambda: node.received == ["one"], "the first message")
        if attack == "replay":
            send_frame(sock, one)
        elif attack == "reorder":
            send_frame(sock, three)
        elif attack == "drop":
            send_frame(sock, three)  # two never arrives
        else:
            spot = 3 if attack == "flip_body" else len(two) - 1
            send_frame(sock, two[:spot] + bytes([two[spot] ^ 1]) + two[spot + 1 :])
        assert closed_by_peer(sock, TIMEOUT_S), f"{attack}: the node must drop the connection"
    assert node.received == ["one"] and frame_counter.rejected_frames == 1


def test_peer_with_another_secret_cannot_complete_the_handshake(
    frame_counter: FrameCodec,
) -> None:
    node = Node()
    with node.serving(), socket.create_connection(("127.0.0.1", node.port)) as sock:
        with pytest.raises(raft_crypto.FrameRejected, match="bad_finished"):
            handshake(sock, b"another-secret-of-16-bytes+")
        assert closed_by_peer(sock, TIMEOUT_S)
    assert node.received == [] and frame_counter.rejected_frames == 1


def test_stranger_cannot_make_the_node_buffer_a_big_frame(frame_counter: FrameCodec) -> None:
    node = Node()
    with node.serving(), socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(LENGTH.pack(100 << 20) + b"x" * 1000)  # claims 100 MiB
        assert closed_by_peer(sock, TIMEOUT_S), "refused at the length, not after 100 MiB"
    assert frame_counter.rejected_frames == 1


def test_stock_pysyncobj_frame_is_refused_unread(frame_counter: FrameCodec) -> None:
    node = Node()
    with node.serving(), socket.create_connection(("127.0.0.1", node.port)) as sock:
        send_frame(sock, pickle.dumps("127.0.0.1:1"))
        assert recv_frame(sock, TIMEOUT_S) is None
    assert node.received == [] and frame_counter.rejected_frames == 1


def wait_for(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
