"""BrokerState: the one replicated state machine (queues, topics, bindings, producers).

`apply(cmd, now_ms) -> result` never raises for bad input: a malformed command or a refused one
is an error result (`storage.errors.error_result`). Time: `self.now_ms = max(self.now_ms,
now_ms)`, then every due timer fires, then the command runs against `self.now_ms`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from storage import validate
from storage.errors import BrokerError, error_result, is_error
from storage.limits import DEFAULT_LIMITS, Limits
from storage.producers import Producers
from storage.queues import Queue, Queues
from storage.topics import TopicLimits, Topics

Result = dict[str, Any]
TOPIC_OPS = ("topic.create", "topic.delete", "binding.delete", "group.commit")
# Membership (replication/membership.py): a pending change older than this may be replaced.
MEMBER_CHANGE_TIMEOUT_MS = 60_000
_MEMBER_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
_MEMBER_ADDR_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,253}:[0-9]{1,5}$")


class BrokerState:
    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.now_ms = 0
        self.applied_total = 0
        self.queues = Queues(limits)
        self.topics = Topics(TopicLimits.from_limits(limits))
        self.producers = Producers(limits)
        # webhook push subscriptions: queue -> {"url", "max_in_flight"} (node/push.py delivers)
        self.push: dict[str, Result] = {}
        # cluster members changed at runtime: id -> {"raft", "http", "status": member|removed}
        self.members: dict[str, Result] = {}
        self.member_change: Result | None = None  # the one pending change, if any
        self.tick_ms = 0  # replicated time at the leader's last tick (0: none yet)
        self.queues.on_delete = self._on_queue_deleted

    def _on_queue_deleted(self, name: str) -> None:
        self.topics.drop_bindings_for_queue(name)
        self.push.pop(name, None)

    # ----- commands
    def apply(self, cmd: Any, now_ms: Any) -> Result:
        """Apply one command. Never raises for bad input: errors are results."""
        if isinstance(now_ms, int) and not isinstance(now_ms, bool):
            self._set_time(now_ms, is_tick=isinstance(cmd, dict) and cmd.get("op") == "tick")
        self.applied_total += 1
        self._advance()
        try:
            if not isinstance(cmd, dict):
                raise BrokerError("invalid_request", "command: must be an object with an op")
            op = cmd.get("op")
            handler = _HANDLERS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise BrokerError("invalid_request", f"op: unknown operation {op!r}")
            return handler(self, cmd)
        except BrokerError as e:
            return e.to_result()

    def _set_time(self, now_ms: int, *, is_tick: bool) -> None:
        """Time only goes forward. The leader's ticks set it; any other entry (stamped by
        whichever node proposed it) may move it at most clock_lead_ms_max past the last tick,
        so one node with a fast clock cannot expire leases, TTLs or dedup windows early."""
        if is_tick or self.tick_ms == 0:
            stamp = now_ms
        else:
            stamp = min(now_ms, self.tick_ms + self.limits.clock_lead_ms_max)
        self.now_ms = max(self.now_ms, stamp)
        if is_tick:
            self.tick_ms = self.now_ms
        assert self.tick_ms <= self.now_ms

    def _advance(self) -> None:
        now = self.now_ms
        self.queues.fire(now)
        self.topics.advance(now)
        self.producers.expire(now)

    def _producer_wrapped(self, cmd: Result, run: Callable[[], Result]) -> Result:
        """Exactly-once: apply `run` under the producer's sequence rules (API.md)."""
        if cmd.get("producer") is None:
            return run()
        ref = validate.producer_ref(cmd["producer"])
        stored = self.producers.check(ref, self.now_ms)
        if stored is not None:
            return stored
        result = run()
        if not is_error(result):
            self.producers.record(ref, result, self.now_ms)
        return result

    # queue ops
    def _queue_name(self, cmd: Result, field: str = "queue") -> str:
        return validate.name(cmd.get(field), field, self.limits)

    def _q_create(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        config = validate.queue_config(cmd.get("config"), self.limits, queue=name)
        return self.queues.create(name, config, self.now_ms)

    def _q_delete(self, cmd: Result) -> Result:
        return self.queues.delete(self._queue_name(cmd))

    def _q_publish(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        messages = validate.publish_messages_checked(cmd.get("messages"), self.limits)
        return self._producer_wrapped(
            cmd, lambda: self.queues.publish(name, messages, self.now_ms))

    def _q_receive(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        req = validate.receive_request(
            {k: cmd[k] for k in ("max_messages", "visibility_timeout_s", "ack", "ack_receipts")
             if k in cmd}, self.limits)
        acked: Result = {}
        if req["ack_receipts"] is not None:  # raises not_found before anything changed
            acked = self.queues.ack(name, req["ack_receipts"], self.now_ms)
        result = self.queues.receive(name, req["max_messages"], req["visibility_timeout_s"],
                                     req["ack"] == "auto", self.now_ms)
        result.update(acked)
        return result

    def _q_ack(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        receipts = validate.receipts_list(cmd.get("receipts"), self.limits)
        return self.queues.ack(name, receipts, self.now_ms)

    def _q_nack(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        receipts = validate.receipts_list(cmd.get("receipts"), self.limits)
        delay_s = validate.seconds(cmd.get("delay_s") or 0, "delay_s",
                                   maximum=self.limits.delay_s_max)
        return self.queues.nack(name, receipts, delay_s, self.now_ms)

    def _q_visibility(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        receipts = validate.receipts_list(cmd.get("receipts"), self.limits)
        timeout_s = validate.seconds(cmd.get("timeout_s"), "timeout_s",
                                     maximum=self.limits.visibility_timeout_s_max)
        return self.queues.visibility(name, receipts, timeout_s, self.now_ms)

    def _q_purge(self, cmd: Result) -> Result:
        return self.queues.purge(self._queue_name(cmd))

    def _q_redrive(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        to = self._queue_name(cmd, "to")
        max_messages = validate.count(cmd.get("max_messages"), "max_messages", minimum=1)
        return self.queues.redrive(name, to, max_messages, self.now_ms)

    def _q_push_set(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        self.queues.get(name)
        url = cmd.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) \
                or len(url) > self.limits.push_url_chars_max:
            raise BrokerError("invalid_request", "url: an http:// or https:// URL of at most "
                                                 f"{self.limits.push_url_chars_max} characters "
                                                 "is required")
        max_in_flight = validate.count(cmd.get("max_in_flight"), "max_in_flight", minimum=1,
                                       maximum=self.limits.push_in_flight_max)
        self.push[name] = {"url": url, "max_in_flight": max_in_flight}
        return {"push": {"queue": name, **self.push[name]}}

    def _q_push_delete(self, cmd: Result) -> Result:
        name = self._queue_name(cmd)
        self.queues.get(name)
        return {"deleted": self.push.pop(name, None) is not None}

    # topic ops
    def _topic_op(self, cmd: Result) -> Result:
        result, routes = self.topics.apply(cmd, self.now_ms)
        assert not routes, "only topic.publish routes messages"
        return result

    def _binding_create(self, cmd: Result) -> Result:
        self.queues.get(self._queue_name(cmd))  # queue_not_found before anything else
        return self._topic_op(cmd)

    def _topic_publish(self, cmd: Result) -> Result:
        return self._producer_wrapped(cmd, lambda: self._topic_publish_once(cmd))

    def _topic_publish_once(self, cmd: Result) -> Result:
        result, routes, commit = self.topics.plan_publish(cmd, self.now_ms)
        if commit is None:
            return result
        plans = self._plan_routes(routes)  # raises queue_full: nothing changed
        commit()
        self._commit_plans(plans)
        return result

    def _plan_routes(self, routes: list[tuple[str, dict[str, Any]]]
                     ) -> list[tuple[Queue, list[dict[str, Any]], list[int | None]]]:
        """Check every target queue accepts its routed messages (all or nothing)."""
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for queue, msg in routes:
            by_queue.setdefault(queue, []).append(msg)
        plans = []
        for queue, msgs in by_queue.items():
            if queue not in self.queues.queues:
                continue  # bindings of deleted queues are dropped with the queue
            q, originals = self.queues.plan(queue, msgs, self.now_ms)
            plans.append((q, msgs, originals))
        return plans

    def _commit_plans(self, plans: list[tuple[Queue, list[dict[str, Any]],
                                              list[int | None]]]) -> list[Result]:
        return [self.queues.commit(q, msgs, originals, self.now_ms)
                for q, msgs, originals in plans]

    # producers and transactions
    def _producer_register(self, cmd: Result) -> Result:
        pid = cmd.get("id")
        if pid is not None:
            pid = validate.name(pid, "id", self.limits)
        return self.producers.register(pid, self.now_ms)

    def _txn(self, cmd: Result) -> Result:
        """Acks and publishes, all or nothing (API.md "Exactly-once")."""
        acks, pubs = self._txn_parts(cmd)
        return self._producer_wrapped(cmd, lambda: self._txn_once(acks, pubs))

    def _txn_parts(self, cmd: Result) -> tuple[list[tuple[str, list[str]]],
                                                 list[tuple[str, str, list[Result]]]]:
        raw_acks, raw_pubs = cmd.get("ack") or [], cmd.get("publish") or []
        if not isinstance(raw_acks, list) or not isinstance(raw_pubs, list):
            raise BrokerError("invalid_request", "ack, publish: must be lists")
        if not raw_acks and not raw_pubs:
            raise BrokerError("invalid_request", "ack, publish: a transaction needs one of them")
        if len(raw_acks) + len(raw_pubs) > self.limits.txn_parts_max:
            raise BrokerError("invalid_request", f"ack, publish: more than txn_parts_max "
                                                 f"({self.limits.txn_parts_max}) parts")
        acks = []
        for i, part in enumerate(raw_acks):
            part = part if isinstance(part, dict) else {}
            acks.append((validate.name(part.get("queue"), f"ack[{i}].queue", self.limits),
                         validate.receipts_list(part.get("receipts"), self.limits,
                                                f"ack[{i}].receipts")))
        pubs = []
        for i, part in enumerate(raw_pubs):
            part = part if isinstance(part, dict) else {}
            kind = "topic" if part.get("topic") is not None else "queue"
            target = validate.name(part.get(kind), f"publish[{i}].{kind}", self.limits)
            if kind == "queue":
                messages = validate.publish_messages_checked(part.get("messages"), self.limits,
                                                             f"publish[{i}].messages")
            else:
                raw = part.get("messages")
                if not isinstance(raw, list) or not raw:
                    raise BrokerError("invalid_request",
                                      f"publish[{i}].messages: must be a non-empty list")
                messages = raw
            pubs.append((kind, target, messages))
        return acks, pubs

    def _txn_once(self, acks: list[tuple[str, list[str]]],
                  pubs: list[tuple[str, str, list[Result]]]) -> Result:
        self._txn_check_acks(acks)
        # topics: one plan per topic (offsets of several parts must not overlap)
        topic_msgs: dict[str, list[Any]] = {}
        for kind, target, messages in pubs:
            if kind == "topic":
                topic_msgs.setdefault(target, []).extend(messages)
        topic_plans: dict[str, tuple[Result, Callable[[], None]]] = {}
        queue_msgs: dict[str, list[Result]] = {}
        for kind, target, messages in pubs:
            if kind == "queue":
                queue_msgs.setdefault(target, []).extend(messages)
        for topic, msgs in topic_msgs.items():
            result, routes, commit = self.topics.plan_publish(
                {"op": "topic.publish", "topic": topic, "messages": msgs}, self.now_ms)
            if commit is None:
                return result
            topic_plans[topic] = (result, commit)
            for queue, msg in routes:
                if queue in self.queues.queues:
                    queue_msgs.setdefault(queue, []).append(msg)
        queue_plans = [(name, *self.queues.plan(name, msgs, self.now_ms))
                       for name, msgs in queue_msgs.items()]
        # every check passed: apply, nothing below can fail
        acked = sum(self.queues.ack(q, receipts, self.now_ms)["acked"] for q, receipts in acks)
        for _, commit in topic_plans.values():
            commit()
        queue_results = {name: self.queues.commit(q, queue_msgs[name], originals,
                                                  self.now_ms)["messages"]
                         for name, q, originals in queue_plans}
        return {"acked": acked, "publish": self._txn_answers(pubs, topic_plans, queue_results),
                "duplicate": False}

    def _txn_check_acks(self, acks: list[tuple[str, list[str]]]) -> None:
        stale: list[str] = []
        seen: dict[tuple[str, str], bool] = {}
        for queue, receipts in acks:
            q = self.queues.get(queue)
            for r in receipts:
                if q.current(r) is None or (queue, r) in seen:
                    stale.append(r)
                seen[(queue, r)] = True
        if stale:
            raise BrokerError("stale_receipt", f"ack: {len(stale)} receipt(s) are stale "
                                               "(redelivered, acked or expired); nothing "
                                               "was applied", stale=stale)

    @staticmethod
    def _txn_answers(pubs: list[tuple[str, str, list[Result]]],
                     topic_plans: dict[str, tuple[Result, Callable[[], None]]],
                     queue_results: dict[str, list[Result]]) -> list[Result]:
        """Split the merged per-target results back into one answer per publish part."""
        taken: dict[tuple[str, str], int] = {}
        out = []
        for kind, target, messages in pubs:
            start = taken.get((kind, target), 0)
            taken[(kind, target)] = start + len(messages)
            source = (topic_plans[target][0]["messages"] if kind == "topic"
                      else queue_results[target])
            out.append({kind: target, "messages": source[start:start + len(messages)]})
        return out

    # noop / tick
    def _noop(self, cmd: Result) -> Result:
        return {}

    # cluster membership: begin (add/remove) -> Raft config change -> commit
    def _member_add(self, cmd: Result) -> Result:
        return self._member_begin(cmd, "add")

    def _member_remove(self, cmd: Result) -> Result:
        return self._member_begin(cmd, "remove")

    def _member_begin(self, cmd: Result, change: str) -> Result:
        want = {"change": change, "id": _member_str(cmd, "id", _MEMBER_ID_RE),
                "raft": _member_str(cmd, "raft", _MEMBER_ADDR_RE),
                "http": _member_str(cmd, "http", _MEMBER_ADDR_RE, optional=change == "remove")}
        pending = self.member_change
        if pending is not None:
            if {k: pending.get(k) for k in want} == want:
                return {"change": dict(pending), "resumed": True}
            if self.now_ms - pending["started_ms"] < MEMBER_CHANGE_TIMEOUT_MS:
                raise BrokerError("membership_change_in_progress",
                                  f"id: {pending['change']} of {pending['id']!r} is still in "
                                  "progress; one membership change at a time")
        known = self.members.get(str(want["id"]), {})
        if change == "add" and known.get("status") == "member":
            raise BrokerError("already_exists", f"id: {want['id']!r} is already a member")
        self.member_change = {**want, "started_ms": self.now_ms}
        assert self.member_change["id"] == want["id"]
        return {"change": dict(self.member_change), "resumed": False}

    def _member_commit(self, cmd: Result) -> Result:
        pending = self.member_change
        if pending is None or (cmd.get("id"), cmd.get("change")) != (pending["id"],
                                                                    pending["change"]):
            return {"committed": False}
        if cmd.get("ok") is True:
            status = "member" if pending["change"] == "add" else "removed"
            self.members[pending["id"]] = {"raft": pending["raft"], "http": pending["http"],
                                           "status": status}
        self.member_change = None
        return {"committed": cmd.get("ok") is True}

    def cluster_members(self) -> Result:
        """The replicated membership table and the pending change (copies)."""
        return {"members": {k: dict(v) for k, v in self.members.items()},
                "change": dict(self.member_change) if self.member_change else None}

    # ----- reads (never change anything)
    def durability(self, kind: str, name: str) -> str:
        """The `durability` a queue or topic (`kind`) was created with; "fsync" if it does not
        exist (yet, on this node): the safe default for the write about to be proposed."""
        found = (self.queues.queues if kind == "queue" else self.topics.topics).get(name)
        return "fsync" if found is None else str(found.config.get("durability", "fsync"))

    def list_queues(self, now_ms: int) -> list[Result]:
        return [self.queue_info(name, now_ms) for name in self.queues.queues]

    def queue_info(self, name: str, now_ms: int) -> Result:
        q = self.queues.queues.get(name)
        if q is None:
            return error_result("queue_not_found", f"queue: {name!r} does not exist")
        info = q.info(max(now_ms, self.now_ms))
        info["bindings"] = self.topics.list_bindings(name)
        info["push"] = self.push.get(name)
        return info

    def peek(self, name: str, max_messages: int) -> Result:
        """Ready messages in delivery order without receiving them (consoles, DLQ inspection)."""
        q = self.queues.queues.get(name)
        if q is None:
            return error_result("queue_not_found", f"queue: {name!r} does not exist")
        limit = max(1, min(max_messages, self.limits.receive_max_messages))
        return {"messages": q.peek(limit)}

    def queue_groups(self, name: str, max_groups: int = 1000) -> Result:
        """Message groups of a queue and their state (busy: one in flight; waiting: behind it)."""
        q = self.queues.queues.get(name)
        if q is None:
            return error_result("queue_not_found", f"queue: {name!r} does not exist")
        return {"groups": q.group_states(max(1, max_groups))}

    def ready_count(self, name: str, now_ms: int) -> int:
        """Messages deliverable now (+1 if a timer is due); -1 if the queue does not exist."""
        if name not in self.queues.queues:
            return -1
        return self.queues.ready_count(name, now_ms)

    def push_subscriptions(self) -> dict[str, Result]:
        return {name: dict(sub) for name, sub in self.push.items()}

    def queue_depths(self) -> dict[str, dict[str, int]]:
        return self.queues.depths()

    def stats(self) -> Result:
        return {
            "now_ms": self.now_ms,
            "applied_total": self.applied_total,
            "queues": len(self.queues.queues),
            "topics": len(self.topics.topics),
            "producers": len(self.producers),
        }

    # ----- snapshot
    def encode(self) -> Result:
        return {
            "now_ms": self.now_ms,
            "tick_ms": self.tick_ms,
            "applied_total": self.applied_total,
            "queues": self.queues.encode(),
            "topics": self.topics.encode(),
            "producers": self.producers.encode(),
            "push": self.push,
            "members": self.members,
            "member_change": self.member_change,
        }

    @classmethod
    def decode(cls, obj: Result, limits: Limits = DEFAULT_LIMITS) -> BrokerState:
        state = cls(limits)
        state.now_ms = obj["now_ms"]
        state.tick_ms = obj.get("tick_ms", 0)
        state.applied_total = obj["applied_total"]
        state.queues = Queues.decode(obj["queues"], limits)
        state.queues.on_delete = state._on_queue_deleted
        state.topics = Topics.decode(obj["topics"], TopicLimits.from_limits(limits))
        state.producers = Producers.decode(obj["producers"], limits)
        state.push = dict(obj.get("push", {}))
        state.members = dict(obj.get("members", {}))
        state.member_change = obj.get("member_change")
        return state

    def encode_snapshot(self) -> bytes:
        from storage.snapshot import encode_snapshot

        return encode_snapshot(self)

    @classmethod
    def decode_snapshot(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> BrokerState:
        from storage.snapshot import decode_snapshot

        return decode_snapshot(data, limits)


_HANDLERS: dict[str, Callable[[BrokerState, Result], Result]] = {
    "noop": BrokerState._noop,
    "tick": BrokerState._noop,
    "queue.create": BrokerState._q_create,
    "queue.delete": BrokerState._q_delete,
    "queue.publish": BrokerState._q_publish,
    "queue.receive": BrokerState._q_receive,
    "queue.ack": BrokerState._q_ack,
    "queue.nack": BrokerState._q_nack,
    "queue.visibility": BrokerState._q_visibility,
    "queue.purge": BrokerState._q_purge,
    "queue.redrive": BrokerState._q_redrive,
    "queue.push_set": BrokerState._q_push_set,
    "queue.push_delete": BrokerState._q_push_delete,
    "topic.publish": BrokerState._topic_publish,
    "binding.create": BrokerState._binding_create,
    "producer.register": BrokerState._producer_register,
    "txn": BrokerState._txn,
    "cluster.member_add": BrokerState._member_add,
    "cluster.member_remove": BrokerState._member_remove,
    "cluster.member_commit": BrokerState._member_commit,
    **{op: BrokerState._topic_op for op in TOPIC_OPS},
}


def _member_str(cmd: Result, field: str, pattern: re.Pattern[str], optional: bool = False
                ) -> str | None:
    value = cmd.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BrokerError("invalid_request", f"{field}: {value!r} must match {pattern.pattern}")
    return value
