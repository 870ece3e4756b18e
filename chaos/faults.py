"""Faults: a seeded schedule, and the nemesis that applies and heals each one.

Families (the CLI's ``--faults``) expand into concrete kinds:

    kill        kill-one, kill-minority, kill-leader, kill-all   (kill -9, restart at heal)
    pause       pause-leader, pause-minority                     (SIGSTOP, SIGCONT at heal)
    partition   partition-leader, partition-halves, partition-bridge, partition-one-way,
                partition-client, partition-ring (5+ nodes)      (iptables DROP, flush at heal)
    corrupt     corrupt-minority: kill a minority, truncate or bit-flip one file in each data
                dir; at heal restart; a node that refuses to start gets its pre-fault copy back.
                corrupt-lagging (composite, the Kafka-2013 / NATS #7549 shape): isolate a
                minority M so it lags, let writes commit on the rest for a moment, kill one
                up-to-date follower F, truncate F's journal back to its size from before those
                writes, kill the remaining up-to-date nodes, heal M and start F: F + M are a
                majority whose logs lack acknowledged entries. F must refuse to start (or not
                vote); if it does not, acknowledged writes are lost.
    disk-full   disk-full-one, disk-full-leader: fill the node's small tmpfs data dir (see
                chaos/disk.py) with a balloon file until writes fail with ENOSPC; the node must
                not ack what it could not persist (raftmq exits, code 75). Heal: delete the
                balloon, restart the node if it exited. disk-full-inodes: one node's file
                system runs out of inodes instead (creating a file fails with ENOSPC while
                appends still work). Skipped (and said so) on a node whose
                data dir is a lazy FUSE mount, which has no capacity.
    network     network-lossy-one (every packet to and from one node dropped with probability
                LOSS_MIN..LOSS_MAX), network-lossy-all (every link lossy), network-slow-one /
                -leader (the node's egress rate-limited by tc tbf: queueing delay up to
                SLOW_LATENCY_MS, then drops). iptables `statistic` DROP, as the kernel has no
                sch_netem: no fixed delay, jitter, reordering or duplication. Heal: flush.
    clock       clock-jump-leader, -one, -all: jump the node's wall AND monotonic clocks
                forward by 1..CLOCK_JUMP_MAX_S (libfaketime; like a VM suspend). The offset
                stays after the heal (clocks never go back): the node keeps a skewed clock.
    clock-back  clock-back-one, -leader: kill the node, set its clock 5..CLOCK_BACK_MAX_S
                BEHIND its offset, restart it (its wall and monotonic clocks went back, like a
                host booted with a wrong RTC); heal: kill, restore the offset, restart (a
                forward step).
    membership  membership-follower: DELETE /v1/cluster/members/{id} of a follower while the
                workload runs, then kill it and wipe its data dir (docs/membership.md: a removed
                node comes back empty). Heal: start it empty, wait for /healthz, POST it back
                to /v1/cluster/members, wait until it is ready (caught up).
    power-loss  power-one, power-all (see chaos/README.md: needs the lazy FUSE file system)
    power-majority  a majority loses power at once, the minority keeps running (its own
                family: it may lose `durability: memory` writes, docs/durability.md)
    wipe-majority  destructive: stop all, erase a majority's data, start that majority; the
                old minority returns at heal. The checker MUST report the run invalid.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import disk
from chaos.client import Http
from chaos.cluster import HTTP_PORT, RAFT_PORT, Cluster
from chaos.history import OK, History
from chaos.lazyfs import LazyMounts
from chaos.netns import CLIENT_ADDRESS, Network, node_address

FAMILIES: dict[str, tuple[str, ...]] = {
    "kill": ("kill-one", "kill-minority", "kill-leader", "kill-all"),
    "pause": ("pause-leader", "pause-minority"),
    "partition": ("partition-leader", "partition-halves", "partition-bridge",
                  "partition-one-way", "partition-client", "partition-ring"),
    "corrupt": ("corrupt-minority", "corrupt-lagging"),
    "power-loss": ("power-one", "power-all"),
    "power-majority": ("power-majority",),
    "clock": ("clock-jump-leader", "clock-jump-one", "clock-jump-all"),
    # A family of its own, not in "clock": adding kinds to a family changes the schedule of
    # every seed, and docs/reliability.md names seeds of runs with "clock".
    "clock-back": ("clock-back-one", "clock-back-leader"),
    "disk-full": ("disk-full-one", "disk-full-leader", "disk-full-inodes"),
    "network": ("network-lossy-one", "network-lossy-all", "network-slow-one",
                "network-slow-leader"),
    "membership": ("membership-follower",),
    "wipe-majority": ("wipe-majority",),
    "none": (),
}
QUIET_START_S = 5.0
FAULT_MIN_S = 4.0
FAULT_MAX_S = 8.0
QUIET_MIN_S = 3.0
QUIET_MAX_S = 6.0
START_WATCH_S = 20.0
LAG_WRITE_S = 2.0
WIPE_WRITE_S = 3.0
CLOCK_JUMP_MAX_S = 120
CLOCK_BACK_MIN_S = 5
CLOCK_BACK_MAX_S = 60
LOSS_MIN = 0.05
LOSS_MAX = 0.3
SLOW_RATE_KBIT_MIN = 256
SLOW_RATE_KBIT_MAX = 2048
SLOW_LATENCY_MS = 400
MEMBER_CHANGE_TIMEOUT_S = 40.0  # > the server's own 30 s change wait (docs/membership.md)
MEMBER_READY_TIMEOUT_S = 40.0
MEMBER_RETRY_S = 0.5
MEMBER_DONE_CODES = {"DELETE": ("member_not_found",), "POST": ("already_exists",)}


@dataclass(frozen=True)
class Fault:
    id: int
    kind: str
    start_s: float
    duration_s: float


def kinds_for(families: list[str], nodes: int) -> list[str]:
    kinds: list[str] = []
    for fam in families:
        if fam in FAMILIES:
            kinds += FAMILIES[fam]
        elif any(fam in ks for ks in FAMILIES.values()):
            kinds.append(fam)
        else:
            raise ValueError(f"unknown fault {fam!r}; known: {', '.join(sorted(FAMILIES))}")
    if nodes < 5:
        kinds = [k for k in kinds if k != "partition-ring"]
    return kinds


def schedule(families: list[str], nodes: int, duration_s: float, seed: int) -> list[Fault]:
    """Quiet start, then fault / quiet alternating; every fault ends 3 s before the end."""
    kinds = kinds_for(families, nodes)
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = min(QUIET_START_S, duration_s / 6)
    while kinds:
        dur = rng.uniform(FAULT_MIN_S, FAULT_MAX_S)
        if t + dur > duration_s - QUIET_MIN_S:
            break
        faults.append(Fault(len(faults) + 1, rng.choice(kinds), round(t, 3), round(dur, 3)))
        t += dur + rng.uniform(QUIET_MIN_S, QUIET_MAX_S)
    return faults


@dataclass
class Nemesis:
    cluster: Cluster
    net: Network
    http: Http
    history: History
    seed: int
    active: dict[int, dict[str, Any]] = field(default_factory=dict)
    lazyfs: LazyMounts | None = None  # set when the data dirs are lazy FUSE mounts
    disks: disk.SmallDisks | None = None  # set when the data dirs are small tmpfs mounts

    @property
    def n(self) -> int:
        return len(self.cluster.nodes)

    def _rng(self, fault: Fault) -> random.Random:
        return random.Random(self.seed * 7919 + fault.id)

    async def leader(self) -> int | None:
        """The index of the leader most running nodes name (highest term), or None."""
        votes: dict[tuple[int, str], int] = {}
        for node in self.cluster.nodes:
            if not node.running() or node.paused:
                continue
            out = await self.http.call("GET", f"{node.http_url}/v1/cluster", timeout_s=1.0)
            if out.type == OK and isinstance(out.body, dict) and out.body.get("leader"):
                key = (int(out.body.get("term") or 0), str(out.body["leader"]))
                votes[key] = votes.get(key, 0) + 1
        if not votes:
            return None
        _term, leader_id = max(votes, key=lambda k: (k[0], votes[k]))
        try:
            return self.cluster.by_id(leader_id).index
        except KeyError:
            return None

    async def _leader_or_random(self, rng: random.Random) -> int:
        leader = await self.leader()
        return leader if leader is not None else rng.randint(1, self.n)

    def _minority(self, rng: random.Random, size: int | None = None) -> list[int]:
        k = size if size is not None else rng.randint(1, (self.n - 1) // 2)
        return sorted(rng.sample(range(1, self.n + 1), k))

    # -- run a schedule ---------------------------------------------------------------------
    async def run(self, faults: list[Fault], t0: float) -> None:
        loop = asyncio.get_running_loop()
        for fault in faults:
            await asyncio.sleep(max(0.0, t0 + fault.start_s - loop.time()))
            await self.start(fault)
            await asyncio.sleep(max(0.0, t0 + fault.start_s + fault.duration_s - loop.time()))
            await self.stop(fault)

    async def start(self, fault: Fault) -> None:
        rng = self._rng(fault)
        family = fault.kind.split("-")[0]
        handler = {"kill": self._kill, "pause": self._pause, "partition": self._partition,
                   "corrupt": self._corrupt, "power": self._power, "wipe": self._wipe,
                   "clock": self._clock, "disk": self._disk_full,
                   "network": self._network, "membership": self._membership}[family]
        details = await handler(fault, rng)
        self.active[fault.id] = {"fault": fault, **details}
        self.history.nemesis("start", {"id": fault.id, "fault": fault.kind, **details})

    async def stop(self, fault: Fault) -> None:
        info = self.active.pop(fault.id)
        healed = await self._heal(fault, info)
        self.history.nemesis("stop", {"id": fault.id, "fault": fault.kind, **healed})

    async def heal_all(self) -> None:
        for fid in sorted(self.active):
            await self.stop(self.active[fid]["fault"])
        await asyncio.to_thread(self.net.heal)
        for node in self.cluster.nodes:
            if node.paused:
                self.cluster.resume(node.index)
            if node.running():
                continue
            if not node.killed:
                self.history.nemesis("note", {"node_exited": node.node_id,
                                              "code": self.cluster.exited(node.index)})
            await asyncio.to_thread(self.cluster.start, node.index)
            backup = node.data_dir.with_name(node.data_dir.name + ".before-corrupt")
            if await self.watch_start(node.index) == "exited" and backup.exists():
                await self._restore_refused([node.index])

    # -- fault kinds ------------------------------------------------------------------------
    async def _kill(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        targets = {
            "kill-one": lambda: self._minority(rng, 1),
            "kill-minority": lambda: self._minority(rng),
            "kill-all": lambda: list(range(1, self.n + 1)),
        }.get(fault.kind)
        idx = targets() if targets else [await self._leader_or_random(rng)]
        for i in idx:
            await asyncio.to_thread(self.cluster.kill, i)
        return {"targets": self._ids(idx), "restart": idx}

    async def _pause(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        if fault.kind == "pause-leader":
            idx = [await self._leader_or_random(rng)]
        else:
            idx = self._minority(rng)
        for i in idx:
            self.cluster.pause(i)
        return {"targets": self._ids(idx), "resume": idx}

    async def _partition(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        grudge = await self._grudge(fault.kind, rng)
        for to, sources in grudge.items():
            for src in sorted(sources):
                await asyncio.to_thread(self.net.drop_from, to, src)
        shown = {self.cluster.node(to).node_id: sorted(srcs) for to, srcs in grudge.items()}
        return {"targets": sorted(shown), "grudge": shown}

    async def _grudge(self, kind: str, rng: random.Random) -> dict[int, set[str]]:
        """node index -> addresses it must not hear from."""
        everyone = list(range(1, self.n + 1))
        if kind == "partition-client":
            return {i: {CLIENT_ADDRESS} for i in self._minority(rng)}
        if kind == "partition-one-way":
            a, b = rng.sample(everyone, 2)
            return {b: {node_address(a)}}
        if kind == "partition-leader":
            lone = [await self._leader_or_random(rng)]
            return _cut(lone, [i for i in everyone if i not in lone])
        if kind == "partition-bridge":
            shuffled = rng.sample(everyone, self.n)
            half = (self.n - 1) // 2
            return _cut(shuffled[:half], shuffled[half + 1:])  # shuffled[half] sees both
        if kind == "partition-ring":
            return _ring(rng.sample(everyone, self.n))
        side = self._minority(rng)  # partition-halves
        return _cut(side, [i for i in everyone if i not in side])

    async def _corrupt(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        if fault.kind == "corrupt-lagging":
            return await self._corrupt_lagging(fault, rng)
        idx = self._minority(rng)
        damage = []
        for i in idx:
            await asyncio.to_thread(self.cluster.kill, i)
            node = self.cluster.node(i)
            backup = node.data_dir.with_name(node.data_dir.name + ".before-corrupt")
            shutil.rmtree(backup, ignore_errors=True)
            shutil.copytree(node.data_dir, backup, symlinks=True)
            damage.append({"node": node.node_id, **corrupt_one_file(node.data_dir, rng)})
        return {"targets": self._ids(idx), "restart": idx, "damage": damage}

    async def _corrupt_lagging(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        leader = await self._leader_or_random(rng)
        others = [i for i in range(1, self.n + 1) if i != leader]
        rng.shuffle(others)
        lagging, follower = others[:(self.n - 1) // 2], others[(self.n - 1) // 2]
        rest = [i for i in range(1, self.n + 1) if i not in lagging and i != follower]
        everyone = list(range(1, self.n + 1))
        for to, sources in _cut(lagging, [i for i in everyone if i not in lagging]).items():
            for src in sorted(sources):
                await asyncio.to_thread(self.net.drop_from, to, src)
        data = self.cluster.node(follower).data_dir
        sizes = {p: p.stat().st_size for p in data.rglob("*") if p.is_file()}
        await asyncio.sleep(min(LAG_WRITE_S, fault.duration_s / 3))
        await asyncio.to_thread(self.cluster.kill, follower)
        backup = data.with_name(data.name + ".before-corrupt")
        shutil.rmtree(backup, ignore_errors=True)
        shutil.copytree(data, backup, symlinks=True)
        damage = truncate_grown_journals(data, sizes)
        for i in rest:
            await asyncio.to_thread(self.cluster.kill, i)
        await asyncio.to_thread(self.net.heal)
        await asyncio.to_thread(self.cluster.start, follower)
        return {"targets": self._ids([follower]), "lagging": self._ids(lagging),
                "killed": self._ids(rest), "restart": rest, "watch": [follower],
                "damage": damage}

    async def _clock(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        if fault.kind.startswith("clock-back"):
            return await self._clock_back(fault, rng)
        if fault.kind == "clock-jump-leader":
            idx = [await self._leader_or_random(rng)]
        elif fault.kind == "clock-jump-one":
            idx = self._minority(rng, 1)
        else:
            idx = list(range(1, self.n + 1))
        offsets = {}
        for i in idx:
            total = self.cluster.jump_clock(i, rng.randint(1, CLOCK_JUMP_MAX_S))
            offsets[self.cluster.node(i).node_id] = total
        return {"targets": self._ids(idx), "offsets_s": offsets}

    async def _clock_back(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        idx = (await self._leader_or_random(rng) if fault.kind.endswith("leader")
               else self._minority(rng, 1)[0])
        before = self.cluster.clock_offset(idx)
        back = rng.randint(CLOCK_BACK_MIN_S, CLOCK_BACK_MAX_S)
        await self._restart_with_clock(idx, before - back)
        return {"targets": self._ids([idx]), "offset_before_s": before,
                "offset_s": before - back, "clock_restore": {str(idx): before}}

    async def _restart_with_clock(self, idx: int, total_s: int) -> None:
        await asyncio.to_thread(self.cluster.kill, idx)
        self.cluster.set_clock(idx, total_s)
        await asyncio.to_thread(self.cluster.start, idx)

    async def _power(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        idx = list(range(1, self.n + 1))  # power-all
        if fault.kind == "power-one":
            idx = self._minority(rng, 1)
        elif fault.kind == "power-majority":
            idx = sorted(rng.sample(idx, self.n // 2 + 1))
        for i in idx:
            await asyncio.to_thread(self.cluster.kill, i)
            lost = self.lazyfs is not None and i in self.lazyfs.mounts
            if self.lazyfs is not None and lost:
                await asyncio.to_thread(self.lazyfs.lose_unsynced, i)
        return {"targets": self._ids(idx), "restart": idx, "lost_unsynced": lost}

    async def _wipe(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        everyone = list(range(1, self.n + 1))
        majority = sorted(rng.sample(everyone, self.n // 2 + 1))
        for i in everyone:
            await asyncio.to_thread(self.cluster.kill, i)
        for i in majority:
            clear_dir(self.cluster.node(i).data_dir)
            await asyncio.to_thread(self.cluster.start, i)
        ready = [await self.watch_start(i) for i in majority]
        await asyncio.sleep(WIPE_WRITE_S)  # let the workload write into the new, empty cluster
        rest = [i for i in everyone if i not in majority]
        return {"targets": self._ids(majority), "restart": rest, "wiped_started": ready}

    async def _network(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        if "slow" in fault.kind:
            idx = (await self._leader_or_random(rng) if fault.kind.endswith("leader")
                   else self._minority(rng, 1)[0])
            rate_kbit = rng.randint(SLOW_RATE_KBIT_MIN, SLOW_RATE_KBIT_MAX)
            await asyncio.to_thread(self.net.rate_limit, idx, rate_kbit, SLOW_LATENCY_MS)
            return {"targets": self._ids([idx]), "rate_kbit": rate_kbit,
                    "latency_ms": SLOW_LATENCY_MS}
        everyone = list(range(1, self.n + 1))
        lossy = everyone if fault.kind.endswith("all") else self._minority(rng, 1)
        probability = round(rng.uniform(LOSS_MIN, LOSS_MAX), 3)
        links = _cut(lossy, everyone) if len(lossy) < self.n else _cut(everyone, everyone)
        for to, sources in sorted(links.items()):
            for src in sorted(sources | ({CLIENT_ADDRESS} if to in lossy else set())):
                await asyncio.to_thread(self.net.lossy_from, to, src, probability)
        return {"targets": self._ids(lossy), "loss_probability": probability}

    async def _membership(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        leader = await self.leader()
        followers = [i for i in range(1, self.n + 1)
                     if i != leader and self.cluster.node(i).running()]
        if leader is None or not followers:
            return {"targets": [], "skipped": "no leader or no running follower"}
        idx = rng.choice(followers)
        node = self.cluster.node(idx)
        answer = await self._member_change("DELETE", leader, f"/v1/cluster/members/"
                                           f"{node.node_id}", None)
        if answer != "ok":
            return {"targets": [node.node_id], "remove": answer}
        await asyncio.to_thread(self.cluster.kill, idx)
        await asyncio.to_thread(clear_dir, node.data_dir)
        return {"targets": [node.node_id], "remove": answer, "readd": idx}

    async def _readd(self, idx: int) -> dict[str, Any]:
        """Start the wiped node, add it back through a member, wait until it has caught up."""
        node = self.cluster.node(idx)
        if not node.running():
            await asyncio.to_thread(self.cluster.start, idx)
        healthy = await self._wait_ok(f"{node.http_url}/healthz", MEMBER_READY_TIMEOUT_S)
        via = next((i for i in range(1, self.n + 1)
                    if i != idx and self.cluster.node(i).running()), idx)
        body = {"id": node.node_id, "raft": f"{node.address}:{RAFT_PORT}",
                "http": f"{node.address}:{HTTP_PORT}"}
        answer = await self._member_change("POST", await self.leader() or via,
                                           "/v1/cluster/members", body)
        ready = await self._wait_ok(f"{node.http_url}/readyz", MEMBER_READY_TIMEOUT_S)
        return {"healthy": healthy, "add": answer, "ready": ready}

    async def _member_change(self, method: str, via: int, path: str,
                             body: dict[str, str] | None) -> str:
        """Retry a membership change until it is done: "ok", or the last error code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MEMBER_CHANGE_TIMEOUT_S
        targets = [via] + [i for i in range(1, self.n + 1) if i != via]
        last = "timeout"
        attempt = 0
        while loop.time() < deadline:
            node = self.cluster.node(targets[attempt % len(targets)])
            attempt += 1
            if node.running():
                out = await self.http.call(method, f"{node.http_url}{path}", body,
                                           timeout_s=MEMBER_CHANGE_TIMEOUT_S)
                if out.type == OK or out.code in MEMBER_DONE_CODES[method]:
                    return "ok"
                last = str(out.code or out.status or out.body)
            await asyncio.sleep(MEMBER_RETRY_S)
        return last

    async def _wait_ok(self, url: str, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if (await self.http.call("GET", url, timeout_s=1.0)).type == OK:
                return True
            await asyncio.sleep(0.2)
        return False

    async def _disk_full(self, fault: Fault, rng: random.Random) -> dict[str, Any]:
        if fault.kind == "disk-full-leader":
            idx = await self._leader_or_random(rng)
        else:
            idx = self._minority(rng, 1)[0]
        node = self.cluster.node(idx)
        if self.disks is None or idx not in self.disks.mounts:
            return {"targets": [node.node_id], "skipped": "data dir is not a small tmpfs"}
        if fault.kind == "disk-full-inodes":
            files = await asyncio.to_thread(disk.inflate_inodes, node.data_dir)
            return {"targets": [node.node_id], "balloon_files": files, "deflate": [idx]}
        size = await asyncio.to_thread(disk.inflate, node.data_dir)
        return {"targets": [node.node_id], "balloon_bytes": size, "deflate": [idx]}

    async def _heal_disk(self, info: dict[str, Any]) -> dict[str, Any]:
        """Free the space; a node that exited on ENOSPC is restarted and must come back."""
        exit_codes: dict[str, int | None] = {}
        restarts: dict[str, str] = {}
        for i in info.get("deflate", []):
            node = self.cluster.node(i)
            await asyncio.to_thread(disk.deflate, node.data_dir)
            if node.running():
                continue
            exit_codes[node.node_id] = self.cluster.exited(i)
            await asyncio.to_thread(self.cluster.start, i)
            restarts[node.node_id] = await self.watch_start(i)
        return {"exit_codes": exit_codes, "restarts": restarts}

    async def _heal(self, fault: Fault, info: dict[str, Any]) -> dict[str, Any]:
        healed: dict[str, Any] = {}
        if fault.kind.startswith("disk-full"):
            healed.update(await self._heal_disk(info))
        if fault.kind.startswith("membership") and "readd" in info:
            healed.update(await self._readd(info["readd"]))
        for i, offset in info.get("clock_restore", {}).items():
            await self._restart_with_clock(int(i), offset)
            healed["offset_s"] = offset
        if fault.kind.startswith(("partition", "network")):
            await asyncio.to_thread(self.net.heal)
        for i in info.get("resume", []):
            self.cluster.resume(i)
        for i in info.get("restart", []):
            if not self.cluster.node(i).running():
                await asyncio.to_thread(self.cluster.start, i)
        if fault.kind == "corrupt-minority":
            healed["refused"] = await self._restore_refused(info["restart"])
        if fault.kind == "corrupt-lagging":
            healed["refused"] = await self._restore_refused(info["watch"])
        return healed

    async def _restore_refused(self, idx: list[int]) -> list[str]:
        """A corrupted node may refuse to start (good); then give it back its old data."""
        refused = []
        for i in idx:
            if await self.watch_start(i) == "exited":
                node = self.cluster.node(i)
                refused.append(node.node_id)
                backup = node.data_dir.with_name(node.data_dir.name + ".before-corrupt")
                clear_dir(node.data_dir)
                shutil.copytree(backup, node.data_dir, symlinks=True, dirs_exist_ok=True)
                await asyncio.to_thread(self.cluster.start, i)
        return refused

    async def watch_start(self, index: int) -> str:
        """After a start: "ready" (/readyz 200), "exited" (refused to start) or "slow"."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WATCH_S
        url = f"{self.cluster.node(index).http_url}/readyz"
        while loop.time() < deadline:
            if self.cluster.exited(index) is not None:
                return "exited"
            out = await self.http.call("GET", url, timeout_s=1.0)
            if out.type == OK:
                return "ready"
            await asyncio.sleep(0.2)
        return "slow"

    def _ids(self, idx: list[int]) -> list[str]:
        return [self.cluster.node(i).node_id for i in idx]


def truncate_grown_journals(data_dir: Path, sizes: dict[Path, int]) -> list[dict[str, Any]]:
    """Cut every journal file (not its .meta) back to its size in `sizes`."""
    damage = []
    for path, old in sorted(sizes.items()):
        if "journal" not in path.name or path.name.endswith(".meta") or not path.exists():
            continue
        size = path.stat().st_size
        if size > old:
            with path.open("r+b") as fh:
                fh.truncate(old)
            damage.append({"file": str(path.relative_to(data_dir)), "mode": "truncate",
                           "size": size, "new_size": old})
    return damage


def clear_dir(path: Path) -> None:
    """Remove everything inside `path` but keep `path` (it may be a mount point)."""
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _cut(side_a: list[int], side_b: list[int]) -> dict[int, set[str]]:
    """Both directions between every node of side_a and every node of side_b."""
    grudge: dict[int, set[str]] = {}
    for a in side_a:
        for b in side_b:
            if a == b:
                continue
            grudge.setdefault(a, set()).add(node_address(b))
            grudge.setdefault(b, set()).add(node_address(a))
    return grudge


def _ring(order: list[int]) -> dict[int, set[str]]:
    """Every node hears only its two ring neighbours: each sees a majority (of 5), none equal."""
    n = len(order)
    grudge: dict[int, set[str]] = {}
    for pos, i in enumerate(order):
        near = {order[(pos - 1) % n], order[(pos + 1) % n], i}
        grudge[i] = {node_address(j) for j in order if j not in near}
    return grudge


def corrupt_one_file(data_dir: Path, rng: random.Random) -> dict[str, Any]:
    """Truncate or flip two bits in one non-empty file under `data_dir` (seeded choice)."""
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.stat().st_size > 0)
    if not files:
        return {"file": None, "mode": "nothing to corrupt"}
    path = rng.choice(files)
    size = path.stat().st_size
    rel = str(path.relative_to(data_dir))
    if rng.random() < 0.5:
        new_size = rng.randrange(0, size)
        with path.open("r+b") as fh:
            fh.truncate(new_size)
        return {"file": rel, "mode": "truncate", "size": size, "new_size": new_size}
    positions = sorted(rng.randrange(0, size) for _ in range(2))
    with path.open("r+b") as fh:
        for pos in positions:
            fh.seek(pos)
            byte = fh.read(1)[0]
            fh.seek(pos)
            fh.write(bytes([byte ^ (1 << rng.randrange(8))]))
    return {"file": rel, "mode": "bitflip", "size": size, "positions": positions}
