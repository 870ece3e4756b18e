"""Dynamic membership: add and remove voting members at runtime (docs/membership.md).

A change has three steps, each through the Raft log:

1. begin: `cluster.member_add {id, raft, http}` / `cluster.member_remove {id, raft}` records the
   one pending change in the replicated table (storage/state.py); a second change while one is
   pending is refused with `membership_change_in_progress` (pysyncobj 0.3.17 never sets its own
   one-change-at-a-time guard, `__changeClusterIDx`, so this table is the guard).
2. the leader's reconciler (below, on every node, acting only while leader) performs the Raft
   configuration change with pysyncobj's addNodeToCluster / removeNodeFromCluster. A leader that
   is itself being removed first transfers leadership (pysyncobj refuses to remove the leader).
3. once the leader's Raft configuration shows the change, it proposes `cluster.member_commit`,
   which updates the table {id: {raft, http, status}} and clears the pending change.

The reconciler makes the change survive the loss of the node that started it or of the leader:
whoever leads next finishes it. Node identity (id) is separate from addresses: the table maps
ids to Raft and HTTP addresses, so every node can answer GET /v1/cluster and name the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from replication.replica import Replica
from replication.types import ProposalError
from storage.errors import BrokerError, is_error

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_MS_DEFAULT = 100  # how often every node looks at the pending change
RAFT_CHANGE_RETRY_MS_DEFAULT = 500  # a refused / lost pysyncobj change is retried after this
CHANGE_WAIT_S_DEFAULT = 30.0  # an HTTP add/remove waits this long for the change to finish
CHANGE_ABORT_S_DEFAULT = 45.0  # a pending change the leader cannot carry out is dropped after
FAIL_SUCCESS = 0  # pysyncobj FAIL_REASON.SUCCESS


@dataclass(frozen=True)
class Member:
    id: str
    raft: str
    http: str | None


class Membership:
    """One node's view of the membership and its share of the reconciliation."""

    def __init__(self, replica: Replica, node_id: str, static: list[Member]) -> None:
        assert any(m.id == node_id for m in static), "this node must be in its cluster file"
        self.replica = replica
        self.node_id = node_id
        self.static = list(static)
        self.reconcile_interval_s = RECONCILE_INTERVAL_MS_DEFAULT / 1000
        self.raft_change_retry_s = RAFT_CHANGE_RETRY_MS_DEFAULT / 1000
        self.change_abort_s = CHANGE_ABORT_S_DEFAULT
        self._raft_change_at = 0.0  # monotonic time of the last pysyncobj change we asked for
        self._commit_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the view --------------------------------------------------------------------------

    def table(self) -> dict[str, Any]:
        result: dict[str, Any] = self.replica.read(lambda s: s.cluster_members())
        return result

    def members(self) -> list[Member]:
        """The cluster file's members, overlaid by the replicated table; a Raft member that is
        being added is named by the pending change (a follower appends the Raft configuration
        before it applies `cluster.member_commit`); any other is shown with its address as id."""
        table = self.table()
        view = {m.id: m for m in self.static}
        for node_id, row in table["members"].items():
            if row["status"] == "member":
                view[node_id] = Member(node_id, row["raft"], row["http"])
            else:
                view.pop(node_id, None)
        change = table["change"]
        if change is not None and change["change"] == "add":
            view.setdefault(change["id"], Member(change["id"], change["raft"], change["http"]))
        raft = self.replica.raft_members()
        by_addr = {m.raft: m for m in view.values()}
        out = [by_addr[a] if a in by_addr else Member(a, a, None) for a in raft]
        return sorted(out, key=lambda m: m.id)

    def pending(self) -> dict[str, Any] | None:
        change: dict[str, Any] | None = self.table()["change"]
        return change

    def find(self, node_id: str) -> Member | None:
        for m in self.members():
            if m.id == node_id:
                return m
        return None

    # -- operations (any node) -------------------------------------------------------------

    async def add(self, node_id: str, raft: str, http: str,
                  wait_s: float = CHANGE_WAIT_S_DEFAULT) -> Member:
        current = self.members()
        for m in current:
            if m.id == node_id or m.raft == raft or (m.http and m.http == http):
                raise BrokerError("already_exists", f"id/raft/http: {node_id!r} ({raft}, {http})"
                                  f" clashes with member {m.id!r} ({m.raft}, {m.http})")
        await self._begin({"op": "cluster.member_add", "id": node_id, "raft": raft,
                           "http": http})
        await self._wait_done(node_id, "member", wait_s)
        return Member(node_id, raft, http)

    async def remove(self, node_id: str, wait_s: float = CHANGE_WAIT_S_DEFAULT) -> Member:
        member = self.find(node_id)
        if member is None:
            raise BrokerError("member_not_found", f"id: {node_id!r} is not a member")
        if len(self.members()) == 1:
            raise BrokerError("invalid_request", "id: cannot remove the last member")
        await self._begin({"op": "cluster.member_remove", "id": node_id, "raft": member.raft,
                           "http": member.http})
        await self._wait_done(node_id, "removed", wait_s)
        return member

    async def _begin(self, cmd: dict[str, Any]) -> None:
        result = await self.replica.propose(cmd)
        if is_error(result):
            err = result["error"]
            raise BrokerError(err["code"], err["message"])
        log.info("event=membership_begin change=%s resumed=%s", result["change"],
                 result["resumed"])

    async def _wait_done(self, node_id: str, status: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            table = self.table()
            row = table["members"].get(node_id)
            change = table["change"]
            if row is not None and row["status"] == status and (
                    change is None or change["id"] != node_id):
                return
            if change is None or change["id"] != node_id:
                raise BrokerError("unavailable", f"id: the change of {node_id!r} was dropped "
                                  "(the leader could not carry it out); see the node logs")
            await asyncio.sleep(self.reconcile_interval_s)
        raise ProposalError("commit_timeout", f"the change of {node_id!r} is still pending "
                            f"after {wait_s} s; GET /v1/cluster shows when it completes")

    # -- reconciliation (every node; acts while leader) ------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        for task in (self._task, self._commit_task):
            if task is not None:
                task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                self.reconcile_once()
            except Exception:
                log.exception("membership reconcile failed")
            await asyncio.sleep(self.reconcile_interval_s)

    def reconcile_once(self) -> None:
        table = self.table()
        change = table["change"]
        self._refresh_ids(table["members"])
        self._gate_writes(table["members"].get(self.node_id), change)
        if change is None or not self.replica.is_leader():
            return
        in_raft = change["raft"] in self.replica.raft_members()
        done = in_raft if change["change"] == "add" else not in_raft
        if done:
            self._commit(change, ok=True)
        elif self._expired(change):
            log.warning("event=membership_abort change=%s", change)
            self._commit(change, ok=False)
        else:
            self._raft_step(change)

    def _refresh_ids(self, table: dict[str, Any]) -> None:
        ids = {m.raft: m.id for m in self.static}
        ids.update({row["raft"]: nid for nid, row in table.items() if row["status"] == "member"})
        self.replica.set_member_ids(ids)

    def _gate_writes(self, own: dict[str, Any] | None, change: dict[str, Any] | None) -> None:
        removed = own is not None and own["status"] == "removed"
        leaving = change is not None and change["change"] == "remove" \
            and change["id"] == self.node_id and not self.replica.is_leader()
        reason = None
        if removed or leaving:
            reason = f"node {self.node_id!r} was removed from the cluster; use another node"
        self.replica.refuse_writes(reason)

    def _expired(self, change: dict[str, Any]) -> bool:
        return bool(time.time() * 1000 - change["started_ms"] > self.change_abort_s * 1000)

    def _raft_step(self, change: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._raft_change_at < self.raft_change_retry_s:
            return
        self._raft_change_at = now
        if change["change"] == "remove" and change["raft"] == self._own_raft():
            log.info("event=membership_transfer_leadership reason=removing_the_leader")
            self.replica.transfer_leadership(_logged("transfer_leadership"))
            return
        log.info("event=membership_raft_change change=%s raft=%s", change["change"],
                 change["raft"])
        self.replica.change_membership(change["change"], change["raft"],
                                       _logged(f"{change['change']} {change['raft']}"))

    def _own_raft(self) -> str:
        for m in self.static:
            if m.id == self.node_id:
                return m.raft
        raise AssertionError("this node is not in its cluster file")

    def _commit(self, change: dict[str, Any], ok: bool) -> None:
        if self._commit_task is not None and not self._commit_task.done():
            return
        cmd = {"op": "cluster.member_commit", "id": change["id"], "change": change["change"],
               "ok": ok}
        self._commit_task = asyncio.get_running_loop().create_task(self._propose_commit(cmd))

    async def _propose_commit(self, cmd: dict[str, Any]) -> None:
        try:
            result = await self.replica.propose(cmd)
            log.info("event=membership_commit cmd=%s result=%s", cmd, result)
        except ProposalError as exc:
            log.info("event=membership_commit_retry cmd=%s error=%s", cmd, exc)


def _logged(what: str) -> Any:
    def callback(result: Any, error: int) -> None:  # Raft thread
        level = logging.INFO if error == FAIL_SUCCESS else logging.WARNING
        log.log(level, "event=membership_raft_result what=%s fail_reason=%s", what, error)

    return callback
