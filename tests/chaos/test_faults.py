"""Fault schedules and file corruption (no root needed)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from chaos.faults import FAMILIES, _cut, _ring, corrupt_one_file, kinds_for, schedule
from chaos.netns import node_address


def test_schedule_is_seeded_and_ends_before_the_run() -> None:
    a = schedule(["kill", "pause", "partition"], 3, 60, seed=5)
    assert a == schedule(["kill", "pause", "partition"], 3, 60, seed=5)
    assert a != schedule(["kill", "pause", "partition"], 3, 60, seed=6)
    assert len(a) >= 4
    for f in a:
        assert f.start_s + f.duration_s <= 60 - 3
    for prev, nxt in zip(a, a[1:], strict=False):
        assert nxt.start_s > prev.start_s + prev.duration_s  # one fault at a time


def test_kinds_expand_families_and_reject_unknown() -> None:
    assert kinds_for(["kill"], 3) == list(FAMILIES["kill"])
    assert "partition-ring" not in kinds_for(["partition"], 3)
    assert "partition-ring" in kinds_for(["partition"], 5)
    assert kinds_for(["kill-leader"], 3) == ["kill-leader"]
    with pytest.raises(ValueError, match="unknown fault"):
        kinds_for(["meteor"], 3)


def test_cut_and_ring_grudges() -> None:
    grudge = _cut([1], [2, 3])
    assert grudge == {1: {node_address(2), node_address(3)}, 2: {node_address(1)},
                      3: {node_address(1)}}
    ring = _ring([1, 2, 3, 4, 5])
    for node, blocked in ring.items():
        assert len(blocked) == 2  # hears itself and two neighbours: a majority of 5
        assert node_address(node) not in blocked


def test_corrupt_one_file_truncates_or_flips(tmp_path: Path) -> None:
    modes = set()
    for seed in range(12):
        data = tmp_path / f"d{seed}"
        data.mkdir()
        original = bytes(range(256)) * 4
        (data / "raft.journal").write_bytes(original)
        result = corrupt_one_file(data, random.Random(seed))
        modes.add(result["mode"])
        after = (data / "raft.journal").read_bytes()
        assert after != original
        if result["mode"] == "truncate":
            assert len(after) == result["new_size"] < len(original)
        else:
            assert len(after) == len(original)
            assert sum(bin(x ^ y).count("1") for x, y in zip(after, original, strict=True)) <= 2
    assert modes == {"truncate", "bitflip"}
    assert corrupt_one_file(tmp_path / "d0" / "none", random.Random(1))["file"] is None


def test_clock_jump_moves_a_running_process_forward(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from chaos.cluster import Cluster, faketime_lib
    from chaos.netns import Network

    if faketime_lib() is None:
        pytest.skip("clock faults need libfaketime (Debian package faketime)")
    cluster = Cluster(Network(1), tmp_path, clock_control=True)  # no namespaces are created
    env = {**os.environ, **cluster._clock_env(cluster.node(1))}
    probe = ("import sys, time\n"
             "t0 = time.time()\n"
             "print('ready', flush=True)\n"
             "sys.stdin.readline()\n"
             "time.sleep(2.5)\n"  # libfaketime re-reads the offset file after > 1 whole s
             "print(round(time.time() - t0))\n")
    proc = subprocess.Popen([sys.executable, "-c", probe], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert cluster.jump_clock(1, 40) == 40
        assert cluster.jump_clock(1, 20) == 60  # offsets accumulate; never backwards
        out, _ = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
    assert 61 <= int(out.strip()) <= 64
    with pytest.raises(AssertionError):
        cluster.jump_clock(1, -5)


def test_without_root_the_harness_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from chaos.netns import unavailable_reason

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (unavailable_reason() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    assert "iproute2" in (unavailable_reason() or "")


def test_clock_set_back_starts_a_process_in_the_past(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    from chaos.cluster import Cluster, faketime_lib
    from chaos.netns import Network

    if faketime_lib() is None:
        pytest.skip("clock faults need libfaketime (Debian package faketime)")
    cluster = Cluster(Network(1), tmp_path, clock_control=True)  # no namespaces are created
    assert cluster.clock_offset(1) == 0
    cluster.set_clock(1, -40)
    assert cluster.clock_offset(1) == -40
    probe = ("import time; t = time.time(); m = time.monotonic(); time.sleep(0.2); "
             "print(t, time.monotonic() - m)")
    env = {**os.environ, **cluster._clock_env(cluster.node(1))}
    out = subprocess.run([sys.executable, "-c", probe], env=env, text=True, check=True,
                         capture_output=True, timeout=30).stdout.split()
    assert -43 < float(out[0]) - time.time() < -37  # 40 s in the past; sleep still works
    assert 0.15 < float(out[1]) < 5  # its monotonic clock still runs forward
    cluster.set_clock(1, 0)
    out = subprocess.run([sys.executable, "-c", probe], env=env, text=True, check=True,
                         capture_output=True, timeout=30).stdout.split()
    assert abs(float(out[0]) - time.time()) < 3


def test_clock_back_family_and_schedule() -> None:
    assert kinds_for(["clock-back"], 3) == ["clock-back-one", "clock-back-leader"]
    # families that documented seeds use keep their kinds (and so their schedules)
    assert kinds_for(["clock"], 3) == ["clock-jump-leader", "clock-jump-one", "clock-jump-all"]
    assert {"network-lossy-one", "network-slow-leader"} <= set(kinds_for(["network"], 3))


class _StubNode:
    def __init__(self, index: int) -> None:
        self.index = index
        self.http_url = f"http://n{index}"

    def running(self) -> bool:
        return True


class _StubCluster:
    nodes = [_StubNode(1), _StubNode(2), _StubNode(3)]

    def node(self, index: int) -> _StubNode:
        return self.nodes[index - 1]


class _StubHttp:
    """Answers membership calls from a script of (type, code); records the URLs asked."""

    def __init__(self, script: list[tuple[str, str | None]]) -> None:
        self.script = script
        self.urls: list[str] = []

    async def call(self, method: str, url: str, body: object = None,
                   timeout_s: float | None = None) -> object:
        from chaos.client import Outcome

        self.urls.append(url)
        kind, code = self.script.pop(0) if self.script else ("fail", "unavailable")
        return Outcome(kind, 200 if kind == "ok" else 409, {}, code)


def _nemesis(script: list[tuple[str, str | None]]) -> tuple[Any, _StubHttp]:
    from chaos.faults import Nemesis
    from chaos.history import History

    http = _StubHttp(script)
    nem = Nemesis(_StubCluster(), None, http, History(), seed=1)  # type: ignore[arg-type]
    return nem, http


def test_member_change_retries_until_done_and_rotates_nodes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import chaos.faults as faults

    monkeypatch.setattr(faults, "MEMBER_RETRY_S", 0.0)
    nem, http = _nemesis([("fail", "membership_change_in_progress"), ("info", None),
                          ("ok", None)])
    assert asyncio.run(nem._member_change("POST", 2, "/v1/cluster/members", {})) == "ok"
    assert http.urls == ["http://n2/v1/cluster/members", "http://n1/v1/cluster/members",
                         "http://n3/v1/cluster/members"]
    nem, http = _nemesis([("fail", "member_not_found")])  # an earlier attempt removed it
    assert asyncio.run(nem._member_change("DELETE", 1, "/v1/cluster/members/n2", None)) == "ok"
    monkeypatch.setattr(faults, "MEMBER_CHANGE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(faults, "MEMBER_RETRY_S", 0.01)
    nem, http = _nemesis([])
    assert asyncio.run(nem._member_change("DELETE", 1, "/v1/cluster/members/n2",
                                          None)) == "unavailable"
    assert len(http.urls) >= 2
