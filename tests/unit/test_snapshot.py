"""Snapshots: versioned, checksummed, and a restored state equals the original."""

from __future__ import annotations

import struct

import pytest

from storage.snapshot import FORMAT_VERSION, MAGIC, SnapshotError, decode_snapshot
from storage.state import BrokerState

T0 = 1_700_000_000_000


def busy_state() -> BrokerState:
    """A state with every structure populated: ready, in flight, delayed, groups, dedup, DLQ."""
    s = BrokerState()
    s.apply({"op": "queue.create", "queue": "q",
             "config": {"max_receives": 2, "dead_letter_queue": "dlq", "message_ttl_s": 100,
                        "visibility_timeout_s": 5}}, T0)
    msgs = [{"body": f"m{i}", "priority": i % 10, "group": ["g1", "g2", None][i % 3],
             "dedup_id": f"d{i}", "delay_s": 7 if i % 4 == 0 else 0,
             "headers": {"k": str(i)}} for i in range(40)]
    assert "error" not in s.apply({"op": "queue.publish", "queue": "q", "messages": msgs}, T0)
    got = s.apply({"op": "queue.receive", "queue": "q", "max_messages": 5}, T0 + 1)
    assert len(got["messages"]) == 5
    s.apply({"op": "queue.receive", "queue": "q", "max_messages": 3}, T0 + 6000)
    reg = s.apply({"op": "producer.register"}, T0 + 6000)
    s.apply({"op": "queue.publish", "queue": "q", "messages": [{"body": "p"}],
             "producer": {"id": reg["id"], "epoch": 1, "seq": 0}}, T0 + 6000)
    s.apply({"op": "topic.create", "topic": "t", "config": {"partitions": 2}}, T0 + 6000)
    s.apply({"op": "binding.create", "queue": "q", "topic": "t"}, T0 + 6000)
    s.apply({"op": "topic.publish", "topic": "t",
             "messages": [{"body": b"x", "headers": {}, "key": "k"}]}, T0 + 6000)
    return s


def test_roundtrip_is_byte_identical_and_behaves_the_same() -> None:
    s = busy_state()
    snap = s.encode_snapshot()
    r = BrokerState.decode_snapshot(snap)
    assert r.encode_snapshot() == snap
    for cmd, now in [({"op": "queue.receive", "queue": "q", "max_messages": 50}, T0 + 20_000),
                     ({"op": "queue.receive", "queue": "dlq", "max_messages": 50}, T0 + 20_000),
                     ({"op": "queue.publish", "queue": "q", "messages": [{"body": "p"}],
                       "producer": {"id": "p-1", "epoch": 1, "seq": 0}}, T0 + 20_000),
                     ({"op": "tick"}, T0 + 200_000)]:
        assert s.apply(cmd, now) == r.apply(cmd, now)
    assert s.encode_snapshot() == r.encode_snapshot()
    assert s.queue_info("q", T0) == r.queue_info("q", T0)


def _with_header(payload: bytes, magic: bytes = MAGIC, version: int = FORMAT_VERSION,
                 crc: int | None = None) -> bytes:
    import zlib

    crc = zlib.crc32(payload) if crc is None else crc
    return struct.pack(">4sHI", magic, version, crc) + payload


def test_corruption_is_detected() -> None:
    snap = busy_state().encode_snapshot()
    payload = snap[10:]
    flipped = bytearray(snap)
    flipped[len(snap) // 2] ^= 0x01
    bad = [b"", snap[:5], snap[:-1], bytes(flipped),
           _with_header(payload, magic=b"XXXX"),
           _with_header(payload, version=FORMAT_VERSION + 1),
           _with_header(payload, crc=(int.from_bytes(snap[6:10], "big") ^ 1)),
           _with_header(b"\xc1garbage"), _with_header(b"\x93\x01\x02\x03")]
    for data in bad:
        with pytest.raises(SnapshotError):
            decode_snapshot(data)


def test_empty_state_roundtrip() -> None:
    s = BrokerState()
    assert BrokerState.decode_snapshot(s.encode_snapshot()).encode_snapshot() == \
        s.encode_snapshot()
