"""Micro-benchmark of one Raft frame's CPU cost, send + receive (docs/security.md §4.3).

    .venv/bin/python -m tests.support.bench_raft_frames

Each codec runs pickle.dumps -> frame bytes -> pickle.loads on the same message, as
pysyncobj's TcpConnection does (sockets excluded), for a 300 B and a 60 KB entry body.
"""

from __future__ import annotations

import pickle
import time
import zlib
from collections.abc import Callable
from typing import Any

from replication import raft_crypto
from replication.patches import FrameCodec

SECRET = b"0123456789abcdef0123456789abcdef"
RUN_S = 1.0


def stock(msg: Any) -> Any:  # pysyncobj 0.3.17 without password: zlib level 3, no MAC
    return pickle.loads(zlib.decompress(zlib.compress(pickle.dumps(msg, 5), 3)))


def make_v1() -> Callable[[Any], Any]:  # raftmq before issue 9: level-0 zlib + HMAC-SHA256
    codec = FrameCodec(SECRET)
    return lambda msg: pickle.loads(codec.decompress(codec.compress(pickle.dumps(msg, 5))))


def make_v2() -> Callable[[Any], Any]:  # issue 9: AES-256-GCM, counter nonces
    hello_c = raft_crypto.make_hello(raft_crypto.ROLE_CONNECTOR)
    hello_a = raft_crypto.make_hello(raft_crypto.ROLE_ACCEPTOR)
    master = raft_crypto.master_key(SECRET)
    c = raft_crypto.derive_session(master, hello_c, hello_a)
    a = raft_crypto.derive_session(master, hello_a, hello_c)
    a.check_finished(c.finished())
    return lambda msg: pickle.loads(a.open(c.seal(pickle.dumps(msg, 5))))


def make_fernet() -> Callable[[Any], Any]:  # pysyncobj's own `password` option
    from pysyncobj.encryptor import getEncryptor

    f = getEncryptor(SECRET)
    return lambda msg: pickle.loads(zlib.decompress(f.decrypt(
        f.encrypt_at_time(zlib.compress(pickle.dumps(msg, 5), 3), int(time.monotonic())))))


def rate(fn: Callable[[Any], Any], msg: Any) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < RUN_S:
        for _ in range(50):
            fn(msg)
        count += 50
    return count / (time.perf_counter() - start)


def main() -> None:
    codecs = {"stock pysyncobj (zlib 3, no auth)": stock, "v1 HMAC-SHA256": make_v1(),
              "v2 AES-256-GCM (now)": make_v2(), "pysyncobj password (Fernet)": make_fernet()}
    for size in (300, 60_000):
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        msg = {"type": "append_entries", "term": 7, "entries": [(body, 12345, 7)]}
        for name, fn in codecs.items():
            print(f"{size:>6} B  {name:<36} {rate(fn, msg):>9,.0f} frames/s")


if __name__ == "__main__":
    main()
