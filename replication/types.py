"""Public types of replication/: config, status and the proposal error (architecture.md §2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from storage.errors import error_result

# Limits and timing defaults, named once (STYLE.md: every limit named, with a default).
PROPOSAL_TIMEOUT_S_DEFAULT = 10.0
BARRIER_TIMEOUT_S_DEFAULT = 5.0
ENTRY_BYTES_MAX_DEFAULT = 60_000  # research/pysyncobj-wire.md: stay below 64 KiB frames
WINDOW_ENTRIES_MAX_DEFAULT = 16  # research/e2e-spike.md §2: 4-16 in flight is enough
PENDING_COMMANDS_MAX_DEFAULT = 100_000  # proposals waiting for a window slot
PENDING_BYTES_MAX_DEFAULT = 256 * 1024 * 1024  # their packed bytes
TICK_INTERVAL_MS_DEFAULT = 500  # the leader proposes {"op": "tick"} about twice a second
NO_LEADER_GRACE_S_DEFAULT = 3.0  # elections take 1-2.5 s with default timeouts
WATCH_INTERVAL_MS_DEFAULT = 100  # how often the loop looks at the leader/role
LOOP_TICK_INTERVAL_MS_DEFAULT = 1  # threading_mode "loop": doTick(0) about every 1 ms
# The leader tells followers a new commit index with its next append_entries if one leaves
# within this delay, instead of a send of its own right after each commit (0: at once).
COMMIT_NOTIFY_DELAY_MS_DEFAULT = 2.0
THREADING_MODES = ("thread", "loop")
# A node that set its state aside for a re-sync (replica.py `_on_divergence`) exits with this
# code unless its config says how to start again (the node server re-executes itself).
RESYNC_EXIT_CODE = 76


class StateMachine(Protocol):
    """What the replica needs of the state (storage.state.BrokerState satisfies it)."""

    def apply(self, cmd: dict[str, Any], now_ms: int) -> dict[str, Any]: ...

    def encode_snapshot(self) -> bytes: ...


@dataclass(frozen=True)
class ReplicaConfig:
    """One node's replication settings.

    `peers` maps node ids to Raft addresses ("host:port") for every voting member; it may or may
    not include this node (if it does, the address must equal `raft_addr`).
    """

    node_id: str
    raft_addr: str
    peers: dict[str, str]
    data_dir: Path
    secret: bytes | None = None
    proposal_timeout_s: float = PROPOSAL_TIMEOUT_S_DEFAULT
    entry_bytes_max: int = ENTRY_BYTES_MAX_DEFAULT
    window_entries_max: int = WINDOW_ENTRIES_MAX_DEFAULT
    pending_commands_max: int = PENDING_COMMANDS_MAX_DEFAULT
    pending_bytes_max: int = PENDING_BYTES_MAX_DEFAULT
    tick_interval_ms: int = TICK_INTERVAL_MS_DEFAULT
    no_leader_grace_s: float = NO_LEADER_GRACE_S_DEFAULT
    # "thread": pysyncobj ticks in its own thread (default, see replication/DESIGN.md
    # "Threading"); "loop": the event loop calls doTick (measured alternative).
    threading_mode: str = "thread"
    # The leader fsyncs its journal right before each poll when it holds unsynced entries, i.e.
    # after append_entries left, so its fsync overlaps the followers' instead of following it.
    leader_early_sync: bool = True
    # Longest a follower may learn of a commit later than pysyncobj would tell it (replica.py,
    # CommitNotifyDeferral); a follower's own forwarded command is told at once. 0: at once.
    commit_notify_delay_ms: float = COMMIT_NOTIFY_DELAY_MS_DEFAULT
    # Extra SyncObjConf keyword arguments (timing knobs), passed through to pysyncobj.
    raft_conf: dict[str, Any] = field(default_factory=dict)
    # Called on the Raft thread once the data dir is marked for a re-sync; must not return.
    # None: exit with RESYNC_EXIT_CODE (a supervisor starts the node again).
    on_resync: Callable[[], None] | None = None

    def members(self) -> dict[str, str]:
        """Every voting member, this node included: {node_id: raft_addr}."""
        own = self.peers.get(self.node_id)
        assert own is None or own == self.raft_addr, f"peers[{self.node_id!r}] != raft_addr"
        assert self.threading_mode in THREADING_MODES, f"threading_mode {self.threading_mode!r}"
        out = dict(self.peers)
        out[self.node_id] = self.raft_addr
        assert len(set(out.values())) == len(out), "two members share a Raft address"
        return out


class MemberStatus(NamedTuple):
    id: str
    raft_addr: str
    reachable: bool  # this node has a live Raft connection to it (always True for itself)
    role: str  # "leader" if it is the leader this node knows, else "follower"/"candidate"/"unknown"


@dataclass(frozen=True)
class ReplicaStatus:
    node_id: str
    leader_id: str | None
    term: int
    commit_index: int
    applied_index: int
    role: str  # "leader" | "follower" | "candidate"
    members: list[MemberStatus]
    ready: bool

    def member(self, node_id: str) -> MemberStatus | None:
        for m in self.members:
            if m.id == node_id:
                return m
        return None


# code -> was it applied? False = certainly not applied; None = unknown.
PROPOSAL_ERROR_APPLIED: dict[str, bool | None] = {
    "no_leader": False,
    "unavailable": False,
    "overloaded": False,
    "commit_timeout": None,
}


class ProposalError(Exception):
    """A proposal that did not produce a result.

    code "no_leader" / "unavailable" / "overloaded" (too many proposals waiting): not applied,
    safe to retry.
    code "commit_timeout": outcome unknown (it may still commit); retry only with the same
    producer seq or dedup id.
    """

    def __init__(self, code: str, message: str) -> None:
        assert code in PROPOSAL_ERROR_APPLIED, f"unknown proposal error {code!r}"
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def applied(self) -> bool | None:
        return PROPOSAL_ERROR_APPLIED[self.code]

    def to_result(self) -> dict[str, Any]:
        return error_result(self.code, self.message)
