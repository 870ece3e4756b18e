"""Process-wide patches of pysyncobj 0.3.17 through its module attributes, each asserted.

* `pysyncobj.syncobj.createJournal` -> our journal factory (replication/journal.py). The factory
  only receives `journalFile`; the journal registers itself under that path so the transport can
  find it (`journal_for`).
* `vars(pysyncobj.pickle)['__protocol'] = 5`: `bytes` travel as bytes, not as latin-1 text
  (1.5x at two layers, research/pysyncobj-wire.md).
* `pysyncobj.tcp_connection.zlib` -> `FrameCodec`: level-0 zlib (tcp_connection.py
  `__processParseMessage`: `pickle.loads(zlib.decompress(data))` is the only unpickling of
  network input, and decompress runs first). With a cluster secret the gate is no longer here:
  replication/transport.py makes every connection a `SecureConnection` (raft_crypto.py: a
  handshake with fresh nonces, then AES-GCM frames), which authenticates and decrypts BEFORE
  pickle sees a byte (a secure connection never calls this codec). The codec's
  HMAC tag path is only reachable by a connection that was not secured; its `rejected_frames`
  counter is where the transport's refusals are counted.
* `pysyncobj.serializer.atomicReplace` -> `durable_replace`: a snapshot received from the leader
  is checked (magic, version, crc32) and made durable (fsync, rename, directory fsync) before it
  replaces ours; the rename pysyncobj attempts after our forked serializer is a no-op (the child
  renames its own file durably).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replication import journal as journal_mod
from replication.journal import DurableJournal

log = logging.getLogger(__name__)

PICKLE_PROTOCOL = 5
FRAME_TAG_BYTES = 32  # HMAC-SHA256
_FRAME_KEY_LABEL = b"raftmq raft frame v1"
ZLIB_LEVEL = 0  # compression of frames costs 150x the patched codec; bodies are bytes already

_lock = threading.Lock()
_installed_secret: list[bytes | None] = []  # empty until installed; then [secret]
_journals: dict[str, DurableJournal] = {}
_compaction_bytes_max: dict[str, int] = {}  # journal path -> compact past this many bytes
_journal_hooks: dict[str, dict[str, Any]] = {}  # journal path -> attributes set at creation
_transports: dict[str, Any] = {}  # journal path -> DurableTransport (for durability_stats)
_fork_managed_dumps: set[str] = set()  # dump paths whose writes our forked child renames itself


class FrameAuthError(Exception):
    """A Raft frame without a valid cluster MAC: never unpickled, the connection is dropped."""


class FrameCodec:
    """Stands in for the `zlib` module inside pysyncobj.tcp_connection (compress/decompress)."""

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret
        self._key = hmac.new(secret, _FRAME_KEY_LABEL, hashlib.sha256).digest() if secret else b""
        self.rejected_frames = 0

    def compress(self, data: bytes, level: int = -1) -> bytes:
        body = zlib.compress(data, ZLIB_LEVEL)
        if not self._key:
            return body
        return hmac.new(self._key, body, hashlib.sha256).digest() + body

    def decompress(self, data: bytes) -> bytes:
        if self._key:
            tag, body = data[:FRAME_TAG_BYTES], data[FRAME_TAG_BYTES:]
            want = hmac.new(self._key, body, hashlib.sha256).digest()
            if len(tag) != FRAME_TAG_BYTES or not hmac.compare_digest(tag, want):
                self.rejected_frames += 1
                if self.rejected_frames <= 10 or self.rejected_frames % 1000 == 0:
                    log.warning("raft_frame_rejected reason=bad_mac count=%d", self.rejected_frames)
                raise FrameAuthError("raft frame without a valid cluster MAC")
            data = body
        return zlib.decompress(data)


def _modules() -> tuple[Any, Any, Any, Any]:
    return (
        importlib.import_module("pysyncobj.syncobj"),
        importlib.import_module("pysyncobj.pickle"),
        importlib.import_module("pysyncobj.tcp_connection"),
        importlib.import_module("pysyncobj.serializer"),
    )


def install(secret: bytes | None) -> None:
    """Idempotent per process; a second call must pass the same secret."""
    assert secret is None or len(secret) >= 16, "the cluster secret must be >= 16 bytes"
    with _lock:
        if _installed_secret:
            assert _installed_secret[0] == secret, "install_patches called with another secret"
            assert_installed()
            return
        syncobj, spickle, tcp, serializer = _modules()
        _check_pristine(syncobj, spickle, tcp, serializer)
        syncobj.createJournal = create_journal
        vars(spickle)["__protocol"] = PICKLE_PROTOCOL
        tcp.zlib = FrameCodec(secret)
        serializer.atomicReplace = durable_replace
        journal_mod.node_pid[0] = os.getpid()
        _installed_secret.append(secret)
    assert_installed()


def _check_pristine(syncobj: Any, spickle: Any, tcp: Any, serializer: Any) -> None:
    """Fail loudly if pysyncobj changed shape (pin 0.3.17): a silent miss = no durability."""
    version = importlib.import_module("pysyncobj.version").VERSION
    assert version == "0.3.17", f"pysyncobj {version}: the hardening is written for 0.3.17"
    assert callable(syncobj.createJournal), "pysyncobj.syncobj.createJournal missing"
    assert vars(spickle).get("__protocol") == 2, "pysyncobj.pickle.__protocol is not 2"
    assert tcp.zlib is zlib, "pysyncobj.tcp_connection.zlib is not the zlib module"
    assert serializer.atomicReplace is os.rename, "pysyncobj.serializer.atomicReplace changed"


def assert_installed() -> None:
    syncobj, spickle, tcp, serializer = _modules()
    assert syncobj.createJournal is create_journal, "journal factory patch lost"
    assert vars(spickle)["__protocol"] == PICKLE_PROTOCOL, "pickle protocol patch lost"
    assert isinstance(tcp.zlib, FrameCodec), "frame codec patch lost"
    assert serializer.atomicReplace is durable_replace, "atomicReplace patch lost"


def installed_secret() -> bytes | None:
    assert _installed_secret, "install_patches() has not run"
    return _installed_secret[0]


def frame_codec() -> FrameCodec:
    codec = importlib.import_module("pysyncobj.tcp_connection").zlib
    assert isinstance(codec, FrameCodec)
    return codec


# -- journal factory ----------------------------------------------------------------------------
def create_journal(journalFile: str | None = None) -> DurableJournal:  # noqa: N803
    """Replaces pysyncobj.syncobj.createJournal: every node gets our durable journal."""
    if journalFile is None:
        raise RuntimeError("raftmq requires a journal file (build_syncobj_args sets one)")
    key = str(Path(journalFile).resolve())
    with _lock:
        old = _journals.pop(key, None)
    if old is not None:
        old.close()
    journal = DurableJournal(key)
    with _lock:
        _journals[key] = journal
        hooks = dict(_journal_hooks.get(key, {}))
    for name, value in hooks.items():
        setattr(journal, name, value)
    return journal


def set_journal_hooks(journal_file: str, *, on_divergence: Callable[[int, int], None]) -> None:
    """Set by the factory on this path's journal as it creates it, i.e. before pysyncobj can
    hand it an entry (`on_divergence` must never miss one)."""
    with _lock:
        _journal_hooks[str(Path(journal_file).resolve())] = {"on_divergence": on_divergence}


def set_compaction_bytes_max(journal_file: str, limit: int) -> None:
    with _lock:
        _compaction_bytes_max[str(Path(journal_file).resolve())] = limit


def compaction_bytes_max(journal_file: str) -> int | None:
    with _lock:
        return _compaction_bytes_max.get(str(Path(journal_file).resolve()))


def register_transport(journal_file: str, transport: Any) -> None:
    with _lock:
        _transports[str(Path(journal_file).resolve())] = transport


def transport_for(journal_file: str) -> Any:
    with _lock:
        return _transports.get(str(Path(journal_file).resolve()))


def journal_for(journal_file: str) -> DurableJournal:
    """The journal the factory created for this path (the transport's way to find it)."""
    with _lock:
        journal = _journals.get(str(Path(journal_file).resolve()))
    assert journal is not None, f"no raftmq journal for {journal_file}: factory patch missing?"
    return journal


# -- snapshot file replacement ------------------------------------------------------------------
def register_fork_managed_dump(dump_file: str) -> None:
    with _lock:
        _fork_managed_dumps.add(str(Path(dump_file).resolve()))


def durable_replace(src: str, dst: str) -> bool:
    """Replaces pysyncobj.serializer.atomicReplace (serializer.py:93 and :198)."""
    dst_key = str(Path(dst).resolve())
    with _lock:
        managed = dst_key in _fork_managed_dumps
    if managed and src == dst + ".tmp":
        return True  # our forked child already wrote, fsync'd and renamed its snapshot
    from replication.snapshots import verify_snapshot_file  # local: snapshots imports us

    verify_snapshot_file(Path(src))  # a corrupt received snapshot never replaces ours
    fd = os.open(src, os.O_RDONLY)
    try:
        journal_mod.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    journal_mod.fsync_dir(Path(dst).parent)
    return True
