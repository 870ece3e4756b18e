"""A raw Raft-port client for tests: pysyncobj's length-prefixed frames and raftmq's handshake."""

from __future__ import annotations

import socket
import struct

from replication import raft_crypto

LENGTH = struct.Struct("i")


def frame(data: bytes) -> bytes:
    return LENGTH.pack(len(data)) + data


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(frame(data))


def recv_frame(sock: socket.socket, timeout_s: float) -> bytes | None:
    """One frame, or None if the peer closed the connection or sent nothing in time."""
    sock.settimeout(timeout_s)
    buf = b""
    try:
        while len(buf) < 4 or len(buf) < 4 + LENGTH.unpack_from(buf)[0]:
            chunk = sock.recv(4 + LENGTH.unpack_from(buf)[0] - len(buf) if len(buf) >= 4 else 4)
            if not chunk:
                return None
            buf += chunk
    except (TimeoutError, ConnectionResetError):
        return None
    return buf[4:]


def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """True once the peer closes (EOF or reset) within timeout_s; frames before that are read."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def handshake(sock: socket.socket, secret: bytes, timeout_s: float = 5.0) -> raft_crypto.Session:
    """Connect as a node would: HELLO both ways, FINISHED both ways. Raises if refused."""
    hello = raft_crypto.make_hello(raft_crypto.ROLE_CONNECTOR)
    send_frame(sock, hello)
    peer_hello = recv_frame(sock, timeout_s)
    assert peer_hello is not None, "no HELLO from the node"
    session = raft_crypto.derive_session(raft_crypto.master_key(secret), hello, peer_hello)
    send_frame(sock, session.finished())
    peer_finished = recv_frame(sock, timeout_s)
    assert peer_finished is not None, "no FINISHED from the node"
    session.check_finished(peer_finished)
    return session
