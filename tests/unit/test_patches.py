"""Wire patches: the MAC'd frame codec, protocol 5, install_patches' assertions, python -O."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from replication.patches import FRAME_TAG_BYTES, FrameAuthError, FrameCodec

REPO = Path(__file__).resolve().parents[2]
SECRET = b"0123456789abcdef-secret"


def test_frame_roundtrip_with_secret() -> None:
    codec = FrameCodec(SECRET)
    payload = pickle.dumps({"type": "append_entries", "entries": [b"x" * 1000]}, 5)
    frame = codec.compress(payload, 3)
    assert len(frame) == FRAME_TAG_BYTES + len(zlib.compress(payload, 0))
    assert codec.decompress(frame) == payload


def test_frame_without_mac_is_rejected_before_unpickling() -> None:
    codec = FrameCodec(SECRET)
    stock_frame = zlib.compress(pickle.dumps("127.0.0.1:1234"), 3)  # what a stranger sends
    with pytest.raises(FrameAuthError):
        codec.decompress(stock_frame)
    assert codec.rejected_frames == 1


def test_frame_with_another_secret_or_tampered_body_is_rejected() -> None:
    ours, theirs = FrameCodec(SECRET), FrameCodec(b"another-secret-of-16+")
    frame = theirs.compress(b"hello", 3)
    with pytest.raises(FrameAuthError):
        ours.decompress(frame)
    good = bytearray(ours.compress(b"hello", 3))
    good[-1] ^= 0x01
    with pytest.raises(FrameAuthError):
        ours.decompress(bytes(good))
    with pytest.raises(FrameAuthError):
        ours.decompress(b"short")


def test_without_secret_frames_are_plain_level0_zlib() -> None:
    codec = FrameCodec(None)
    frame = codec.compress(b"abc" * 100, 3)
    assert zlib.decompress(frame) == b"abc" * 100  # stock nodes can read it
    assert len(frame) > 300, "level 0: stored, not compressed"
    assert codec.decompress(zlib.compress(b"xyz", 9)) == b"xyz"


def run_py(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_install_patches_takes_effect_and_is_idempotent() -> None:
    code = """
import importlib, zlib
from replication import hardening, patches
hardening.install_patches(secret=b"0123456789abcdef")
hardening.install_patches(secret=b"0123456789abcdef")
sp = importlib.import_module("pysyncobj.pickle")
assert vars(sp)["__protocol"] == 5
assert isinstance(importlib.import_module("pysyncobj.tcp_connection").zlib, patches.FrameCodec)
assert importlib.import_module("pysyncobj.syncobj").createJournal is patches.create_journal
try:
    hardening.install_patches(secret=b"another-secret-0000")
except AssertionError as e:
    print("refused:", e)
"""
    out = run_py(code)
    assert out.returncode == 0, out.stderr
    assert "refused: install_patches called with another secret" in out.stdout


def test_unknown_syncobj_option_is_refused(tmp_path: Path) -> None:
    code = f"""
from pathlib import Path
from replication import hardening
hardening.install_patches(secret=None)
hooks = hardening.SnapshotHooks(encode=lambda: b"", install=lambda d: None)
try:
    hardening.build_syncobj_args(node_id="a", raft_addr="127.0.0.1:1", peers={{}},
        data_dir=Path({str(tmp_path)!r}), snapshot_hooks=hooks, flushJournal=True)
except AssertionError as e:
    print("refused:", e)
"""
    out = run_py(code)
    assert out.returncode == 0, out.stderr
    assert "unknown SyncObjConf options" in out.stdout and "flushJournal" in out.stdout


def test_conf_defaults() -> None:
    code = """
import tempfile
from pathlib import Path
from replication import hardening
from replication.transport import DurableTransport
hardening.install_patches(secret=None)
hooks = hardening.SnapshotHooks(encode=lambda: b"", install=lambda d: None)
args = hardening.build_syncobj_args(node_id="a", raft_addr="127.0.0.1:7001",
    peers={"a": "127.0.0.1:7001", "b": "127.0.0.1:7002"}, data_dir=Path(tempfile.mkdtemp()),
    snapshot_hooks=hooks)
c = args["conf"]
assert args["otherNodes"] == ["127.0.0.1:7002"] and args["transportClass"] is DurableTransport
assert c.appendEntriesUseBatch is False and c.appendEntriesPeriod == 0.1
assert (c.raftMinTimeout, c.raftMaxTimeout) == (0.4, 1.4)
assert abs(c.leaderFallbackTimeout - 2.8) < 1e-9
assert c.appendEntriesBatchSizeBytes == 65536 and c.dynamicMembershipChange is True
assert c.logCompactionMinEntries == 20000 and c.logCompactionMinTime == 300
assert c.connectionRetryTime == 0.5  # a restarted lower-address node is called back soon
assert c.bindAddress == "127.0.0.1:7001" and c.fullDumpFile and c.journalFile
print("ok")
"""
    out = run_py(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_python_O_is_refused() -> None:  # noqa: N802
    out = run_py("from replication import hardening; hardening.refuse_optimized_python()", "-O")
    assert out.returncode != 0
    assert "python -O" in out.stderr
