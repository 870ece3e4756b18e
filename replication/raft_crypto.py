"""Encrypted, replay-proof Raft frames: key derivation, handshake and AEAD (docs/security.md §4).

Per process, once: `master_key(secret)` = scrypt(cluster secret) (slow on purpose: a captured
handshake does not let anyone test guesses of a weak secret quickly).

Per connection:
1. Each side sends a HELLO frame in clear: magic, its role (c = the side that connected,
   a = the side that accepted) and 32 fresh random bytes.
2. Both derive two session keys with HKDF-SHA256 from the master key and both HELLOs
   (the transcript): one per direction. Fresh nonces from both sides = fresh keys on every
   connection, so nothing recorded on another connection decrypts on this one.
3. Each side's first sealed frame (counter 0) is FINISHED, a fixed text: it proves the sender
   derived the same keys, i.e. knows the secret, before any pickled frame is accepted.
4. Every later frame is AES-256-GCM with the direction's counter (1, 2, ...) as nonce. The
   counter is implicit (never sent): a replayed, reordered, dropped or altered frame fails.
"""

from __future__ import annotations

import functools
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

HELLO_MAGIC = b"RMQ\x02"
NONCE_BYTES = 32
HELLO_BYTES = len(HELLO_MAGIC) + 1 + NONCE_BYTES
ROLE_CONNECTOR = b"c"
ROLE_ACCEPTOR = b"a"
TAG_BYTES = 16  # AES-GCM tag: the whole per-frame overhead
KEY_BYTES = 32
FRAME_BYTES_MAX = 64 << 20  # an authenticated peer's frame (chunks are <= 64 KiB + overhead)
COUNTER_MAX = (1 << 64) - 1
SECRET_BYTES_MIN = 16
# scrypt cost: ~16 MiB and ~50 ms once per process (RFC 7914's interactive setting).
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_SALT = b"raftmq raft master key v2"
_SESSION_INFO = b"raftmq raft session keys v2"
_FINISHED = b"raftmq raft finished v2"


class FrameRejected(Exception):
    """A Raft frame that fails the handshake or authentication: the connection is dropped."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"raft frame rejected: {reason}")
        self.reason = reason


@functools.lru_cache(maxsize=4)
def master_key(secret: bytes) -> bytes:
    assert len(secret) >= SECRET_BYTES_MIN, "the cluster secret must be >= 16 bytes"
    kdf = Scrypt(salt=_SCRYPT_SALT, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    key = kdf.derive(secret)
    assert len(key) == KEY_BYTES
    return key


def make_hello(role: bytes) -> bytes:
    assert role in (ROLE_CONNECTOR, ROLE_ACCEPTOR)
    hello = HELLO_MAGIC + role + secrets.token_bytes(NONCE_BYTES)
    assert len(hello) == HELLO_BYTES
    return hello


def _peer_role(role: bytes) -> bytes:
    return ROLE_ACCEPTOR if role == ROLE_CONNECTOR else ROLE_CONNECTOR


def derive_session(master: bytes, own_hello: bytes, peer_hello: bytes) -> Session:
    """The session of the side that sent `own_hello`; FrameRejected if `peer_hello` is not a
    HELLO of the other role (a reflected or foreign frame)."""
    role = own_hello[len(HELLO_MAGIC) : len(HELLO_MAGIC) + 1]
    want = HELLO_MAGIC + _peer_role(role)
    if len(peer_hello) != HELLO_BYTES or not peer_hello.startswith(want):
        raise FrameRejected("bad_hello")
    assert len(own_hello) == HELLO_BYTES and own_hello != peer_hello
    ours_first = role == ROLE_CONNECTOR
    hello_c, hello_a = (own_hello, peer_hello) if ours_first else (peer_hello, own_hello)
    okm = HKDF(
        algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=None,
        info=_SESSION_INFO + hello_c + hello_a,
    ).derive(master)
    c2a, a2c = okm[:KEY_BYTES], okm[KEY_BYTES:]
    return Session(c2a, a2c) if ours_first else Session(a2c, c2a)


class Session:
    """One connection's two directions: seal what we send, open what we receive, in order."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        assert len(send_key) == KEY_BYTES and len(recv_key) == KEY_BYTES
        assert send_key != recv_key
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self.sent = 0  # frames sealed so far = the next send counter
        self.received = 0  # frames opened so far = the next receive counter

    def seal(self, plain: bytes) -> bytes:
        assert self.sent <= COUNTER_MAX, "send counter exhausted: reconnect"
        frame = self._send.encrypt(self.sent.to_bytes(12, "big"), plain, None)
        self.sent += 1
        return frame

    def open(self, frame: bytes) -> bytes:
        if self.received > COUNTER_MAX or len(frame) < TAG_BYTES:
            raise FrameRejected("bad_frame")
        try:
            plain = self._recv.decrypt(self.received.to_bytes(12, "big"), frame, None)
        except InvalidTag:
            raise FrameRejected("bad_tag" if self.received else "bad_finished") from None
        self.received += 1
        return plain

    def finished(self) -> bytes:
        assert self.sent == 0, "FINISHED is the first sealed frame"
        return self.seal(_FINISHED)

    def check_finished(self, frame: bytes) -> None:
        assert self.received == 0, "FINISHED is the first frame opened"
        if self.open(frame) != _FINISHED:
            raise FrameRejected("bad_finished")
