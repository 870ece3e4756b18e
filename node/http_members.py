"""Membership endpoints (API.md "Cluster and operations", docs/membership.md).

POST /v1/cluster/members {"id", "raft", "http"} adds a voting member; DELETE
/v1/cluster/members/{id} removes one. Either works on any node and returns once the change is
committed through Raft (replication/membership.py). A node asked to remove itself hands the
request to another member, because a removed node no longer hears how its removal ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from node.app import CTX, ctx
from node.codec import read_body, respond
from node.config import NODE_ID_RE, ConfigError, split_addr
from replication.membership import CHANGE_WAIT_S_DEFAULT, Member, Membership
from replication.types import ReplicaStatus
from storage.errors import BrokerError


@dataclass
class _Slot:
    membership: Membership | None = None  # set when the app starts (it needs the replica)


MEMBERSHIP = web.AppKey("raftmq_membership", _Slot)
FORWARD_TIMEOUT_S = CHANGE_WAIT_S_DEFAULT + 5.0  # a forwarded removal waits for its change
FORWARD_HEADERS = ("Authorization", "X-Request-Id", "Accept")


def _membership(request: web.Request) -> Membership:
    membership = request.app[MEMBERSHIP].membership
    if membership is None:
        raise BrokerError("unavailable", "membership is not running on this node yet")
    return membership


def _member_json(m: Member) -> dict[str, Any]:
    return {"id": m.id, "raft": m.raft, "http": m.http}


def _field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BrokerError("invalid_request", f"{name}: a non-empty string is required")
    return value


def parse_member(body: dict[str, Any]) -> Member:
    node_id = _field(body, "id")
    if not NODE_ID_RE.fullmatch(node_id):
        raise BrokerError("invalid_request", f"id: {node_id!r} must match {NODE_ID_RE.pattern}")
    addrs = {}
    for name in ("raft", "http"):
        addrs[name] = _field(body, name)
        try:
            split_addr(addrs[name])
        except ConfigError as exc:
            raise BrokerError("invalid_request", f"{name}: {exc}") from None
    if addrs["raft"] == addrs["http"]:
        raise BrokerError("invalid_request", "raft, http: must be different addresses")
    return Member(node_id, addrs["raft"], addrs["http"])


async def post_member(request: web.Request) -> web.Response:
    member = parse_member(await read_body(request))
    membership = _membership(request)
    added = await membership.add(member.id, member.raft, str(member.http))
    return respond(request, {"member": _member_json(added),
                             "members": [_member_json(m) for m in membership.members()]},
                   status=201)


async def delete_member(request: web.Request) -> web.Response:
    node_id = request.match_info["id"]
    membership = _membership(request)
    if node_id == membership.node_id:
        return await _forward(request, membership)
    removed = await membership.remove(node_id)
    return respond(request, {"removed": _member_json(removed),
                             "members": [_member_json(m) for m in membership.members()]})


async def _forward(request: web.Request, membership: Membership) -> web.Response:
    """Removing this node: another member (the leader if that is not us) runs the change."""
    if membership.find(membership.node_id) is None:
        raise BrokerError("member_not_found", f"id: {membership.node_id!r} is not a member")
    target = _forward_target(request, membership)
    scheme = ctx(request).cluster.scheme
    url = f"{scheme}://{target.http}{request.rel_url}"
    headers = {k: request.headers[k] for k in FORWARD_HEADERS if k in request.headers}
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.delete(url, headers=headers, ssl=False) as resp:
            body = await resp.read()
            return web.Response(body=body, status=resp.status,
                                content_type=resp.content_type)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BrokerError("unavailable", f"id: removing this node needs another member; "
                          f"{target.id} ({target.http}) did not answer: {exc}") from None


def _forward_target(request: web.Request, membership: Membership) -> Member:
    others = [m for m in membership.members() if m.id != membership.node_id and m.http]
    if not others:
        raise BrokerError("invalid_request", "id: cannot remove the last member")
    leader = ctx(request).replica.leader_id()
    for m in others:
        if m.id == leader:
            return m
    return others[0]


def member_rows(request: web.Request, status: ReplicaStatus) -> list[dict[str, Any]] | None:
    """GET /v1/cluster's members (current, with HTTP addresses); None if not set up."""
    slot = request.app.get(MEMBERSHIP)
    membership = slot.membership if slot is not None else None
    if membership is None:
        return None
    rows = []
    for m in membership.members():
        seen = status.member(m.id)
        rows.append({"id": m.id, "raft": m.raft, "http": m.http,
                     "role": seen.role if seen else "unknown",
                     "reachable": seen.reachable if seen else False})
    return rows


async def membership_ctx(app: web.Application) -> AsyncIterator[None]:
    context = app[CTX]
    static = [Member(n.id, n.raft, n.http) for n in context.cluster.nodes]
    membership = Membership(context.replica, context.node.id, static)
    app[MEMBERSHIP].membership = membership
    membership.start()
    yield
    with contextlib.suppress(Exception):
        await membership.close()


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/cluster/members", post_member)
    app.router.add_delete("/v1/cluster/members/{id}", delete_member)
    app[MEMBERSHIP] = _Slot()
    app.cleanup_ctx.append(membership_ctx)
