"""Encrypted Raft between two real node processes (tests/support/durability_node.py), with every
byte between them recorded by a TCP proxy. What an operator relies on: entry bodies never cross
in clear; a recording replayed to a node is refused and counted; a byte flipped on the wire
drops that connection, and replication carries on over a new one.

Routing through the proxy: pysyncobj names a peer by its address, and only the node with the
greater address connects. The writer W is started with the proxy's address as its peer's
address (chosen below W's), the other node R with W's real address: W connects to the proxy,
the proxy to R, and R knows W by the address W announces.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest

from tests.support.cluster import wait_until, worker_index
from tests.support.durability_cluster import DCluster, DNode, wait_acks
from tests.support.raft_wire import LENGTH, closed_by_peer

pytestmark = pytest.mark.integration

SECRET_HEX = "00112233445566778899aabbccddeeff"
ENTRIES = 150
PAYLOAD_BYTES = 2000  # each entry carries b"x" * 2000
CLEAR_MARKER = b"x" * 64
FLIP_AT = 20_000  # a byte well past the handshake, inside replication traffic


class WireProxy:
    """Forwards each connection to `upstream_port`; records what the connector sent on each;
    flips one byte (at `flip_at` of the first connection's stream) when asked."""

    def __init__(self, upstream_port: int, below: str, flip_at: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.listener = self._listen_below(below)
        self.addr = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.flip_at = flip_at
        self.sent: list[bytearray] = []  # per connection, connector -> upstream
        self.received = 0  # bytes upstream -> connector, all connections
        self._socks: list[socket.socket] = [self.listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @staticmethod
    def _listen_below(addr: str) -> socket.socket:
        # The nodes listen on 20000-31999 (tests/support/cluster.py): ports 10000-19999 sort
        # below every one of them, each pytest worker trying its own thousand first.
        first = 10_000 + worker_index() % 10 * 1_000
        for port in [*range(first, 20_000), *range(10_000, first)]:
            if f"127.0.0.1:{port}" >= addr:
                continue
            try:
                return socket.create_server(("127.0.0.1", port))
            except OSError:
                continue
        raise AssertionError(f"no free port whose address sorts below {addr}")

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                except OSError:
                    client.close()
                    continue
                self._socks += [client, upstream]
                record = bytearray()
                self.sent.append(record)
                flip = self.flip_at if len(self.sent) == 1 else None
                for args in ((client, upstream, record, flip), (upstream, client, None, None)):
                    thread = threading.Thread(target=self._pipe, args=args, daemon=True)
                    thread.start()
                    self._threads.append(thread)

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bytearray | None,
              flip_at: int | None) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                if record is None:
                    self.received += len(chunk)
                else:
                    if flip_at is not None:
                        chunk, flip_at = self._flip(record, chunk, flip_at)
                    record += chunk
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _flip(record: bytearray, chunk: bytes, flip_at: int) -> tuple[bytes, int | None]:
        """Flip the first ciphertext byte of the first frame that starts at or after flip_at
        (never a length header: a longer length would stall, not fail). Returns the chunk and
        the flip_at still pending (None once flipped)."""
        data, scan = bytes(record) + chunk, 0
        while scan + LENGTH.size <= len(data):
            target = scan + LENGTH.size
            if scan >= flip_at:
                if target >= len(data):
                    return chunk, scan  # the frame's body is in a later chunk
                i = target - len(record)
                assert i >= 0, "the target was already forwarded"
                return chunk[:i] + bytes([chunk[i] ^ 0x40]) + chunk[i + 1 :], None
            scan = target + LENGTH.unpack_from(data, scan)[0]
        return chunk, flip_at

    def close(self) -> None:
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(10)


def start_through_proxy(cluster: DCluster, flip_at: int | None = None,
                        max_entries: int = ENTRIES) -> tuple[DNode, DNode, WireProxy]:
    """Start R (idle) and W (writer) with W -> proxy -> R; returns (W, R, proxy).
    `max_entries` 0: W writes until it is killed."""
    writer, reader = sorted(cluster.nodes, key=lambda n: n.raft, reverse=True)
    proxy = WireProxy(int(reader.raft.split(":")[1]), below=writer.raft, flip_at=flip_at)
    cluster.start(reader, "idle")
    real = reader.raft
    reader.raft = proxy.addr  # W's view of R: the proxy
    try:
        cluster.start(writer, "write", "--window", "5", "--max-entries", str(max_entries),
                      "--payload-bytes", str(PAYLOAD_BYTES), "--retry")
    finally:
        reader.raft = real
    return writer, reader, proxy


def rejected(node: DNode) -> int:
    return int((node.stats() or {}).get("frames_rejected", 0))


def test_entries_cross_encrypted_and_a_recording_replays_nowhere(tmp_path: Path) -> None:
    cluster = DCluster(tmp_path, 2, secret=SECRET_HEX)
    proxy: WireProxy | None = None
    try:
        writer, reader, proxy = start_through_proxy(cluster)
        wait_acks([writer], ENTRIES, timeout_s=120)
        wait_until(lambda: (reader.stats() or {}).get("applied", 0) >= ENTRIES,
                   what="the other node to apply every entry")
        wire = bytes(proxy.sent[0])
        assert len(wire) + proxy.received > ENTRIES * PAYLOAD_BYTES, "the entries crossed here"
        assert CLEAR_MARKER not in wire, "an entry body crossed in clear"
        assert rejected(reader) == 0, "clean traffic is never refused"
        applied = (reader.stats() or {})["applied"]
        host, port = reader.raft.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(wire)  # the whole recorded connection, to the same node
            assert closed_by_peer(sock, timeout_s=10), "the replaying connection is dropped"
        wait_until(lambda: rejected(reader) >= 1, what="the replay to be counted")
        assert (reader.stats() or {})["applied"] == applied, "nothing replayed was applied"
    finally:
        cluster.kill_all()
        if proxy is not None:
            proxy.close()


def test_a_flipped_byte_on_the_wire_drops_the_connection_and_replication_goes_on(
    tmp_path: Path,
) -> None:
    cluster = DCluster(tmp_path, 2, secret=SECRET_HEX)
    proxy: WireProxy | None = None
    try:
        # W writes on until killed: if the dropped connection also moved the leadership to R,
        # W's commands that were in flight then never get an answer (the test writer has no
        # timeouts, unlike a node's proposer), and a fixed count would never be reached.
        writer, reader, proxy = start_through_proxy(cluster, flip_at=FLIP_AT, max_entries=0)
        wait_acks([writer], ENTRIES, timeout_s=120)
        assert len(proxy.sent[0]) > FLIP_AT, "the flipped byte was sent"
        assert len(proxy.sent) >= 2, "the tampered connection was replaced by a new one"
        wait_until(lambda: rejected(reader) >= 1, what="the tampered frame to be counted")
        wait_until(lambda: (reader.stats() or {}).get("applied", 0) >= ENTRIES,
                   what="the other node to apply every entry after reconnecting")
    finally:
        cluster.kill_all()
        if proxy is not None:
            proxy.close()
