"""Snapshot encoding of the whole BrokerState: msgpack, a format version and a crc32.

Layout: MAGIC (4 bytes) | version (u16, big endian) | crc32 of the payload (u32) | payload,
where the payload is msgpack of `BrokerState.encode()`. Decoding checks all three and raises
`SnapshotError` on any mismatch or malformed content, so a corrupt file is never loaded.
`decode(encode(s))` encodes byte-identically (heaps, deques, dict orders and counters are kept).
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any

import msgpack

from storage.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from storage.state import BrokerState

MAGIC = b"RMQS"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sHI")


class SnapshotError(Exception):
    """A snapshot that is truncated, corrupt, or of an unknown format version."""


def encode_snapshot(state: BrokerState) -> bytes:
    payload: bytes = msgpack.packb(state.encode(), use_bin_type=True)
    return _HEADER.pack(MAGIC, FORMAT_VERSION, zlib.crc32(payload)) + payload


def decode_snapshot(data: bytes, limits: Limits = DEFAULT_LIMITS) -> BrokerState:
    from storage.state import BrokerState

    obj = decode_payload(data)
    try:
        return BrokerState.decode(obj, limits)
    except (KeyError, TypeError, ValueError, IndexError, AssertionError) as e:
        raise SnapshotError(f"snapshot: malformed state: {e!r}") from e


def decode_payload(data: bytes) -> Any:
    """Check the header and checksum; return the unpacked payload."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < _HEADER.size:
        raise SnapshotError("snapshot: too short for a header")
    magic, version, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"snapshot: bad magic {bytes(magic)!r}")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot: format version {version}, expected {FORMAT_VERSION}")
    payload = memoryview(data)[_HEADER.size:]  # no copy: a 1M-message snapshot is ~300 MB
    if zlib.crc32(payload) != crc:
        raise SnapshotError("snapshot: checksum mismatch (corrupt or truncated)")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types on garbage
        raise SnapshotError(f"snapshot: payload is not msgpack: {e!r}") from e
