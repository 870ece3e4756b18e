"""Checkers over a history (see history.py): queues, topics, availability.

Each checker returns ``{"valid": bool, "anomalies": {class: {"count", "examples"}}, "stats"}``.
Every class is defined in chaos/README.md; the unit tests in tests/chaos/test_checker.py give a
failing and a passing history for each one. All work is O(n log n) in the history length.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from chaos.history import FAIL, INFO, INVOKE, NEMESIS, OK, Op, pairs

EXAMPLES_MAX = 32
QUEUE_CLASSES = (
    "lost",  # acked publish never delivered, even by the final drain
    "unacked",  # delivered, but no delivery of it was ever acked (drain included)
    "unexpected",  # delivered, never published
    "aborted_read",  # delivered, every publish attempt definitely failed
    "duplicated",  # one published value stored as two queue entries (two message ids)
    "acked_then_redelivered",  # delivered again after an ack of it returned ok
    "lease_violation",  # delivered again while an earlier delivery's lease was still valid
    "fifo_violation",  # a producer's later message delivered before its earlier one
    "divergent",  # nodes disagree about the final queue state
    "not_drained",  # a node still reports messages after the final drain
)
TOPIC_CLASSES = (
    "lost",  # acked publish absent from the final read of every node
    "lost_on_node",  # acked publish absent from the final read of some node
    "unexpected",
    "aborted_read",
    "inconsistent_offsets",  # one (topic, partition, offset) with two values
    "duplicated",  # one value at two offsets
    "offset_gap",  # the final log of a partition skips an offset
    "divergent",  # final reads through two nodes differ
    "nonmonotonic_send",  # one producer's later publish got a lower offset (same partition)
    "committed_offset_regression",  # a group-offset read missed the last ok commit before it
    "stale_read",  # a linearizable read missed an offset acked before it was invoked
    "subscribe_gap",  # a live subscription skipped or repeated an offset of a partition
)


class Anomalies:
    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.found: dict[str, list[Any]] = {c: [] for c in classes}

    def add(self, cls: str, example: Any) -> None:
        assert cls in self.found, cls
        self.found[cls].append(example)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            c: {"count": len(v), "examples": v[:EXAMPLES_MAX]} for c, v in self.found.items()
        }

    def valid(self) -> bool:
        return not any(self.found.values())


# ---------------------------------------------------------------------------------------------
# queues


@dataclass(frozen=True)
class Delivery:
    value: str
    msg_id: str
    receipt: str
    receive_count: int
    lease_ms: int  # lease_expires_at, server (state) time
    server_ms: int  # lease_expires_at - visibility timeout: when the state delivered it
    invoke_ns: int
    complete_ns: int
    op_index: int
    pos: int
    node: str | None


@dataclass
class QueueFacts:
    attempts: dict[str, int]
    definite_fails: dict[str, int]
    acked_publish: set[str]
    producer_order: dict[str, list[tuple[int, list[str]]]]
    deliveries: list[Delivery]
    ack_ok_ns: dict[str, int]  # receipt -> completion time of the first ok, non-stale ack
    ack_unknown: set[str]  # receipts named by an ack whose outcome is unknown (info / no answer)
    release_ns: dict[str, int]  # receipt -> invoke time of the first nack of it


def _queue_facts(ops: list[Op]) -> QueueFacts:
    facts = QueueFacts({}, {}, set(), defaultdict(list), [], {}, set(), {})
    for inv, comp in pairs(ops):
        if inv["f"] == "publish":
            _publish_facts(facts, inv, comp)
        elif inv["f"] == "receive" and comp is not None and comp["type"] == OK:
            _receive_facts(facts, inv, comp)
        elif inv["f"] == "ack" and (comp is None or comp["type"] == INFO):
            facts.ack_unknown.update(inv["value"]["receipts"])
        elif inv["f"] == "ack" and comp is not None and comp["type"] == OK:
            stale = set(comp["value"].get("stale", []))
            for r in inv["value"]["receipts"]:
                if r not in stale:
                    facts.ack_ok_ns.setdefault(r, comp["time_ns"])
        elif inv["f"] == "nack":
            for r in inv["value"]["receipts"]:
                facts.release_ns.setdefault(r, inv["time_ns"])
    return facts


def _publish_facts(facts: QueueFacts, inv: Op, comp: Op | None) -> None:
    values: list[str] = inv["value"]["values"]
    for v in values:
        facts.attempts[v] = facts.attempts.get(v, 0) + 1
        if comp is not None and comp["type"] == FAIL:
            facts.definite_fails[v] = facts.definite_fails.get(v, 0) + 1
    if comp is not None and comp["type"] == OK:
        facts.acked_publish.update(values)
        producer = inv["value"].get("producer")
        if producer is not None:
            facts.producer_order[str(producer)].append((int(inv["value"]["seq"]), values))


def _receive_facts(facts: QueueFacts, inv: Op, comp: Op) -> None:
    vt_ms = int(float(inv["value"]["vt_s"]) * 1000)
    for pos, m in enumerate(comp["value"]["messages"]):
        lease = int(m["lease_expires_at"])
        facts.deliveries.append(Delivery(
            value=m["value"], msg_id=str(m["id"]), receipt=str(m["receipt"]),
            receive_count=int(m["receive_count"]), lease_ms=lease, server_ms=lease - vt_ms,
            invoke_ns=inv["time_ns"], complete_ns=comp["time_ns"], op_index=inv["index"],
            pos=pos, node=comp["node"],
        ))


def check_queue(ops: list[Op]) -> dict[str, Any]:
    facts = _queue_facts(ops)
    found = Anomalies(QUEUE_CLASSES)
    _check_delivered_values(facts, found)
    _check_redeliveries(facts, found)
    _check_fifo(facts, found)
    _check_final_state(ops, found)
    deliveries_per_value: dict[str, int] = defaultdict(int)
    for d in facts.deliveries:
        deliveries_per_value[d.value] += 1
    stats = {
        "publish_attempted": len(facts.attempts),
        "publish_acked": len(facts.acked_publish),
        "deliveries": len(facts.deliveries),
        "redeliveries": sum(n - 1 for n in deliveries_per_value.values()),
        "acked_values": len({d.value for d in facts.deliveries if d.receipt in facts.ack_ok_ns}),
    }
    return {"valid": found.valid(), "anomalies": found.summary(), "stats": stats}


def _check_delivered_values(facts: QueueFacts, found: Anomalies) -> None:
    ids_by_value: dict[str, set[str]] = defaultdict(set)
    acked_values: set[str] = set()  # acked, or named by an ack whose outcome is unknown
    for d in facts.deliveries:
        ids_by_value[d.value].add(d.msg_id)
        if d.receipt in facts.ack_ok_ns or d.receipt in facts.ack_unknown:
            acked_values.add(d.value)
    for v in sorted(ids_by_value):
        if v not in facts.attempts:
            found.add("unexpected", v)
        elif v not in facts.acked_publish and facts.definite_fails.get(v) == facts.attempts[v]:
            found.add("aborted_read", v)
        if len(ids_by_value[v]) > 1:
            found.add("duplicated", {"value": v, "ids": sorted(ids_by_value[v])})
    for v in sorted(facts.acked_publish):
        if v not in ids_by_value:
            found.add("lost", v)
        elif v not in acked_values:
            found.add("unacked", v)


def _check_redeliveries(facts: QueueFacts, found: Anomalies) -> None:
    by_id: dict[str, list[Delivery]] = defaultdict(list)
    for d in facts.deliveries:
        by_id[d.msg_id].append(d)
    for msg_id in sorted(by_id):
        # receive_count is the state's own order of a message's deliveries: two receives
        # answered in one tick window share server_ms and may complete out of invoke order
        ds = sorted(by_id[msg_id], key=lambda d: (d.server_ms, d.receive_count, d.op_index))
        acked_ns = min((facts.ack_ok_ns[d.receipt] for d in ds if d.receipt in facts.ack_ok_ns),
                       default=None)
        for d in ds:
            if acked_ns is not None and d.invoke_ns > acked_ns:
                found.add("acked_then_redelivered", _show(d))
        for first, second in zip(ds, ds[1:], strict=False):
            released = facts.release_ns.get(first.receipt)
            if released is not None and released < second.complete_ns:
                continue
            if second.server_ms < first.lease_ms:
                found.add("lease_violation", {"first": _show(first), "second": _show(second)})


def _check_fifo(facts: QueueFacts, found: Anomalies) -> None:
    first: dict[str, Delivery] = {}
    for d in facts.deliveries:
        if d.receive_count == 1 and d.value not in first:
            first[d.value] = d
    for producer in sorted(facts.producer_order):
        batches = sorted(facts.producer_order[producer])
        prev: Delivery | None = None
        for _seq, values in batches:
            for v in values:
                got = first.get(v)
                if got is None:
                    continue  # never seen on its first delivery: no order evidence
                d = got
                if prev is not None and _delivered_before(d, prev):
                    found.add("fifo_violation", {"producer": producer, "earlier": _show(prev),
                                                 "later": _show(d)})
                if prev is None or (d.server_ms, d.op_index, d.pos) > (
                        prev.server_ms, prev.op_index, prev.pos):
                    prev = d


def _delivered_before(later: Delivery, earlier: Delivery) -> bool:
    """Was `later` certainly delivered before `earlier` (by the state's clock or list order)?"""
    if later.server_ms != earlier.server_ms:
        return later.server_ms < earlier.server_ms
    return later.op_index == earlier.op_index and later.pos < earlier.pos


def _show(d: Delivery) -> dict[str, Any]:
    return {"value": d.value, "id": d.msg_id, "receive_count": d.receive_count,
            "server_ms": d.server_ms, "lease_ms": d.lease_ms, "node": d.node, "op": d.op_index}


QUEUE_STATE_KEYS = ("ready", "in_flight", "delayed", "published_total", "acked_total")


def final_notes(ops: list[Op], key: str) -> list[Any]:
    return [op["value"][key] for op in ops
            if op["process"] == NEMESIS and op["f"] == "note" and key in op["value"]]


def _check_final_state(ops: list[Op], found: Anomalies) -> None:
    for state in final_notes(ops, "final_queue_state"):
        seen: dict[tuple[Any, ...], list[str]] = defaultdict(list)
        for node in sorted(state):
            stats = state[node]
            if stats is None:
                found.add("not_drained", {"node": node, "error": "unreachable"})
                continue
            seen[tuple(stats.get(k) for k in QUEUE_STATE_KEYS)].append(node)
            left = sum(int(stats.get(k) or 0) for k in ("ready", "in_flight", "delayed"))
            if left:
                found.add("not_drained", {"node": node, "stats": stats})
        if len(seen) > 1:
            found.add("divergent", {"keys": QUEUE_STATE_KEYS,
                                    "states": {str(k): v for k, v in seen.items()}})


# ---------------------------------------------------------------------------------------------
# topics

Slot = tuple[str, int, int]  # topic, partition, offset


@dataclass
class TopicFacts:
    attempts: dict[str, int]
    definite_fails: dict[str, int]
    acked: dict[str, tuple[str, int, int] | None]  # value -> slot from the ack (if known)
    sends: dict[str, list[tuple[int, str, int, int]]]  # producer -> (seq, topic, part, offset)
    values_at: dict[Slot, set[str]]
    slots_of: dict[tuple[str, str], set[tuple[int, int]]]  # (topic, value) -> {(part, off)}
    read_values: set[str]
    final: dict[str, dict[tuple[str, int], list[tuple[int, str]]]]  # node -> (t, p) -> log
    subscribe_gaps: list[dict[str, Any]] = field(default_factory=list)


def _topic_facts(ops: list[Op]) -> TopicFacts:
    facts = TopicFacts({}, {}, {}, defaultdict(list), defaultdict(set), defaultdict(set), set(),
                       defaultdict(dict))
    for inv, comp in pairs(ops):
        if inv["f"] == "topic-publish":
            _topic_publish_facts(facts, inv, comp)
        elif inv["f"] == "topic-read" and comp is not None and comp["type"] == OK:
            _topic_read_facts(facts, inv, comp)
        elif inv["f"] == "topic-subscribe" and comp is not None and comp["type"] == OK:
            _topic_subscribe_facts(facts, inv, comp)
    return facts


def _topic_subscribe_facts(facts: TopicFacts, inv: Op, comp: Op) -> None:
    """Events of one live subscription: like reads, and each partition's offsets consecutive."""
    topic: str = inv["value"]["topic"]
    last: dict[int, int] = {}
    for part, off, v in comp["value"]["messages"]:
        slot = (topic, int(part), int(off))
        facts.values_at[slot].add(str(v))
        facts.slots_of[(topic, str(v))].add((int(part), int(off)))
        facts.read_values.add(str(v))
        if int(part) in last and int(off) != last[int(part)] + 1:
            facts.subscribe_gaps.append({"stream": inv["value"].get("stream"),
                                         "partition": part, "after": last[int(part)],
                                         "got": off, "node": comp["node"]})
        last[int(part)] = int(off)


def _topic_publish_facts(facts: TopicFacts, inv: Op, comp: Op | None) -> None:
    topic: str = inv["value"]["topic"]
    values: list[str] = inv["value"]["values"]
    for v in values:
        facts.attempts[v] = facts.attempts.get(v, 0) + 1
        if comp is not None and comp["type"] == FAIL:
            facts.definite_fails[v] = facts.definite_fails.get(v, 0) + 1
    if comp is None or comp["type"] != OK:
        return
    offsets = comp["value"].get("offsets") or [None] * len(values)
    for v, po in zip(values, offsets, strict=True):
        if po is None:
            facts.acked[v] = None
            continue
        part, off = int(po[0]), int(po[1])
        facts.acked[v] = (topic, part, off)
        facts.values_at[(topic, part, off)].add(v)
        facts.slots_of[(topic, v)].add((part, off))
        producer = inv["value"].get("producer")
        if producer is not None:
            facts.sends[str(producer)].append((int(inv["value"]["seq"]), topic, part, off))


def _topic_read_facts(facts: TopicFacts, inv: Op, comp: Op) -> None:
    topic: str = inv["value"]["topic"]
    part = int(inv["value"]["partition"])
    log: list[tuple[int, str]] = [(int(o), str(v)) for o, v in comp["value"]["messages"]]
    for off, v in log:
        facts.values_at[(topic, part, off)].add(v)
        facts.slots_of[(topic, v)].add((part, off))
        facts.read_values.add(v)
    if inv["value"].get("final"):
        node = str(inv["value"].get("node") or comp["node"])
        facts.final[node].setdefault((topic, part), []).extend(log)


def check_topic(ops: list[Op]) -> dict[str, Any]:
    facts = _topic_facts(ops)
    found = Anomalies(TOPIC_CLASSES)
    for slot in sorted(facts.values_at):
        if len(facts.values_at[slot]) > 1:
            found.add("inconsistent_offsets", {"slot": slot,
                                               "values": sorted(facts.values_at[slot])})
    for key in sorted(facts.slots_of):
        if len(facts.slots_of[key]) > 1:
            found.add("duplicated", {"topic": key[0], "value": key[1],
                                     "slots": sorted(facts.slots_of[key])})
    for v in sorted(facts.read_values):
        if v not in facts.attempts:
            found.add("unexpected", v)
        elif v not in facts.acked and facts.definite_fails.get(v) == facts.attempts[v]:
            found.add("aborted_read", v)
    _check_topic_final(facts, found)
    for gap in facts.subscribe_gaps:
        found.add("subscribe_gap", gap)
    _check_sends(facts, found)
    _check_group_offsets(ops, found)
    _check_stale_reads(ops, found)
    stats = {"publish_attempted": len(facts.attempts), "publish_acked": len(facts.acked),
             "values_read": len(facts.read_values), "final_nodes": sorted(facts.final)}
    return {"valid": found.valid(), "anomalies": found.summary(), "stats": stats}


def _check_topic_final(facts: TopicFacts, found: Anomalies) -> None:
    if not facts.final:
        return
    per_node_values: dict[str, set[str]] = {}
    for node in sorted(facts.final):
        logs = facts.final[node]
        per_node_values[node] = {v for log in logs.values() for _o, v in log}
        for (topic, part), log in sorted(logs.items()):
            offsets = sorted({o for o, _v in log})
            if offsets and offsets != list(range(offsets[0], offsets[-1] + 1)):
                found.add("offset_gap", {"node": node, "topic": topic, "partition": part})
    canon = {n: sorted((k, sorted(set(v))) for k, v in facts.final[n].items())
             for n in facts.final}
    if len({repr(c) for c in canon.values()}) > 1:
        found.add("divergent", {"nodes": sorted(facts.final)})
    for v in sorted(facts.acked):
        missing = [n for n, vals in per_node_values.items() if v not in vals]
        if len(missing) == len(per_node_values):
            found.add("lost", v)
        elif missing:
            found.add("lost_on_node", {"value": v, "nodes": missing})


def _check_sends(facts: TopicFacts, found: Anomalies) -> None:
    for producer in sorted(facts.sends):
        last: dict[tuple[str, int], tuple[int, int]] = {}
        for seq, topic, part, off in sorted(facts.sends[producer]):
            prev = last.get((topic, part))
            if prev is not None and off <= prev[1]:
                found.add("nonmonotonic_send", {"producer": producer, "topic": topic,
                                                "partition": part, "seqs": [prev[0], seq],
                                                "offsets": [prev[1], off]})
            last[(topic, part)] = (seq, off)


def _check_group_offsets(ops: list[Op], found: Anomalies) -> None:
    """A linearizable read of a group's committed offset returns the last commit before it.

    Allowed: the value of the last commit that returned ok before the read was invoked, or the
    value of any commit with an unknown outcome invoked before the read (it may land late).
    """
    commits: dict[tuple[str, str, int], list[tuple[int, int, str]]] = defaultdict(list)
    reads: list[tuple[Op, Op]] = []
    for inv, comp in pairs(ops):
        if inv["f"] == "group-commit" and (comp is None or comp["type"] != FAIL):
            done_ns = comp["time_ns"] if comp is not None else inv["time_ns"]
            kind = comp["type"] if comp is not None else INFO
            for po in inv["value"]["offsets"]:
                key = (inv["value"]["topic"], inv["value"]["group"], int(po["partition"]))
                commits[key].append((done_ns if kind == OK else inv["time_ns"],
                                     int(po["offset"]), kind))
        elif inv["f"] == "group-read" and comp is not None and comp["type"] == OK:
            reads.append((inv, comp))
    for inv, comp in reads:
        for p in comp["value"]["partitions"]:
            key = (inv["value"]["topic"], inv["value"]["group"], int(p["partition"]))
            before = sorted(c for c in commits.get(key, []) if c[0] < inv["time_ns"])
            last_ok = [o for _t, o, kind in before if kind == OK]
            if not last_ok:
                continue
            allowed = {last_ok[-1]} | {o for _t, o, kind in before if kind == INFO}
            got = p.get("committed")
            if got is None or int(got) not in allowed:
                found.add("committed_offset_regression", {"key": key, "last_ok_commit":
                                                          last_ok[-1], "read": got,
                                                          "op": inv["index"]})


def _check_stale_reads(ops: list[Op], found: Anomalies) -> None:
    """A linearizable read invoked after publish(v) at offset o returned must see past o."""
    events: list[tuple[int, int, Op, Op]] = []  # (time, order, inv, comp)
    for inv, comp in pairs(ops):
        if comp is None or comp["type"] != OK:
            continue
        if inv["f"] == "topic-publish":
            events.append((comp["time_ns"], 0, inv, comp))
        elif inv["f"] == "topic-read" and inv["value"].get("consistency") == "linearizable":
            events.append((inv["time_ns"], 1, inv, comp))
    floor: dict[tuple[str, int], int] = {}
    for _t, order, inv, comp in sorted(events, key=lambda e: (e[0], e[1])):
        topic = inv["value"]["topic"]
        if order == 0:
            for po in comp["value"].get("offsets") or []:
                if po is not None and po[1] is not None:
                    key = (topic, int(po[0]))
                    floor[key] = max(floor.get(key, -1), int(po[1]))
            continue
        key = (topic, int(inv["value"]["partition"]))
        hw = comp["value"].get("high_watermark")
        if key in floor and (hw is None or int(hw) <= floor[key]):
            found.add("stale_read", {"topic": topic, "partition": key[1], "high_watermark": hw,
                                     "acked_offset_before": floor[key], "op": inv["index"],
                                     "node": comp["node"]})


# ---------------------------------------------------------------------------------------------
# availability

WRITE_FS = ("publish", "topic-publish", "txn-in-publish", "txn")


def availability(ops: list[Op]) -> dict[str, Any]:
    """ok writes/s inside each fault window, and time to the first ok write after each heal."""
    done = [(inv, comp) for inv, comp in pairs(ops) if inv["f"] in WRITE_FS and comp is not None]
    ok_times = sorted(comp["time_ns"] for _inv, comp in done if comp["type"] == OK)
    ok_after = sorted((inv["time_ns"], comp["time_ns"]) for inv, comp in done
                      if comp["type"] == OK)
    windows = fault_windows(ops)
    result = []
    for w in windows:
        start, stop = w["start_ns"], w["stop_ns"]
        n = _count_between(ok_times, start, stop)
        duration_s = max((stop - start) / 1e9, 1e-9)
        first = next((c for i, c in ok_after if i >= stop), None)
        result.append({**w, "ok_writes": n, "ok_writes_per_s": round(n / duration_s, 2),
                       "first_ok_write_after_heal_s":
                       None if first is None else round((first - stop) / 1e9, 3)})
    recovery = [w["first_ok_write_after_heal_s"] for w in result]
    known = [r for r in recovery if r is not None]
    return {"faults": result, "recovery_s_max": max(known) if known else None,
            "heals_without_later_write": sum(1 for r in recovery if r is None),
            "outcomes": _outcome_counts(ops)}


def _count_between(sorted_times: list[int], start: int, stop: int) -> int:
    import bisect
    return bisect.bisect_left(sorted_times, stop) - bisect.bisect_left(sorted_times, start)


def fault_windows(ops: list[Op]) -> list[dict[str, Any]]:
    starts: dict[int, Op] = {}
    windows = []
    end_ns = ops[-1]["time_ns"] if ops else 0
    for op in ops:
        if op["process"] != NEMESIS or op["f"] not in ("start", "stop"):
            continue
        fid = int(op["value"]["id"])
        if op["f"] == "start":
            starts[fid] = op
        elif fid in starts:
            s = starts.pop(fid)
            windows.append({"id": fid, "fault": s["value"]["fault"],
                            "targets": s["value"].get("targets"), "start_ns": s["time_ns"],
                            "stop_ns": op["time_ns"]})
    for fid, s in starts.items():
        windows.append({"id": fid, "fault": s["value"]["fault"], "targets":
                        s["value"].get("targets"), "start_ns": s["time_ns"], "stop_ns": end_ns})
    return sorted(windows, key=lambda w: w["start_ns"])


def _outcome_counts(ops: list[Op]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {OK: 0, FAIL: 0, INFO: 0})
    for op in ops:
        if op["process"] != NEMESIS and op["type"] != INVOKE:
            counts[op["f"]][op["type"]] += 1
    return dict(counts)


# ---------------------------------------------------------------------------------------------
# transactions (chaos/txn.py: consume-transform-produce)

TXN_CLASSES = (
    "lost_input",  # an acked input never produced an output (never consumed exactly once)
    "lost_output",  # a transaction answered ok, but an output of it was never delivered
    "duplicated_output",  # one input's outputs came from two transactions, or one output twice
    "aborted_output",  # an output of a transaction that definitely failed was delivered
    "unexpected_output",  # an output no transaction attempted (or not for that input)
    "unexpected_input",  # an input delivered that was never published (or definitely failed)
    "not_redelivered",  # an input of an aborted transaction was never delivered again
    "not_drained",  # the input or output queue was not empty on every node at the end
)


@dataclass
class TxnFacts:
    in_attempts: dict[str, int]
    in_fails: dict[str, int]
    in_acked: set[str]
    deliveries: dict[str, list[tuple[str, int]]]  # input -> [(receipt, complete_ns)]
    txns: dict[str, dict[str, Any]]  # txn id -> inputs, receipts, outputs, attempts
    outputs: dict[str, set[str]]  # output body -> message ids


def _txn_facts(ops: list[Op]) -> TxnFacts:
    facts = TxnFacts({}, {}, set(), defaultdict(list), {}, defaultdict(set))
    for inv, comp in pairs(ops):
        kind = comp["type"] if comp is not None else INFO
        if inv["f"] == "txn-in-publish":
            for v in inv["value"]["values"]:
                facts.in_attempts[v] = facts.in_attempts.get(v, 0) + 1
                facts.in_fails[v] = facts.in_fails.get(v, 0) + (kind == FAIL)
            if kind == OK:
                facts.in_acked.update(inv["value"]["values"])
        elif inv["f"] == "txn":
            txn = facts.txns.setdefault(inv["value"]["txn"], {**inv["value"], "attempts": []})
            txn["attempts"].append(kind)
        elif inv["f"] in ("txn-receive", "txn-out-receive") and kind == OK:
            assert comp is not None
            for m in comp["value"]["messages"]:
                if inv["f"] == "txn-receive":
                    facts.deliveries[str(m["value"])].append((str(m["receipt"]),
                                                              comp["time_ns"]))
                else:
                    facts.outputs[str(m["value"])].add(str(m["id"]))
    return facts


def txn_status(attempts: list[str]) -> str:
    """committed (some attempt ok), aborted (every attempt definitely failed) or unknown."""
    if OK in attempts:
        return "committed"
    return "aborted" if attempts and all(a == FAIL for a in attempts) else "unknown"


def check_txn(ops: list[Op]) -> dict[str, Any]:
    from chaos.txn import parse_output  # the output format belongs to the workload

    facts = _txn_facts(ops)
    found = Anomalies(TXN_CLASSES)
    txn_of_input: dict[str, set[str]] = defaultdict(set)
    for body in sorted(facts.outputs):
        parsed = parse_output(body)
        txn = facts.txns.get(parsed[1]) if parsed else None
        if parsed is None or txn is None or parsed[0] not in txn["inputs"]:
            found.add("unexpected_output", body)
            continue
        txn_of_input[parsed[0]].add(parsed[1])
        if txn_status(txn["attempts"]) == "aborted":
            found.add("aborted_output", {"output": body, "attempts": txn["attempts"]})
        if len(facts.outputs[body]) > 1:
            found.add("duplicated_output", {"output": body, "ids": sorted(facts.outputs[body])})
    for v in sorted(txn_of_input):
        if len(txn_of_input[v]) > 1:
            found.add("duplicated_output", {"input": v, "txns": sorted(txn_of_input[v])})
    _check_txn_inputs(facts, txn_of_input, found)
    for note in final_notes(ops, "txn_drained"):
        if not note:
            found.add("not_drained", {"queues": "chaos-in / chaos-out"})
    stats = {"inputs_acked": len(facts.in_acked), "txns": len(facts.txns),
             "committed": sum(txn_status(t["attempts"]) == "committed"
                              for t in facts.txns.values()),
             "aborted": sum(txn_status(t["attempts"]) == "aborted"
                            for t in facts.txns.values()),
             "forced_aborts": sum(bool(t.get("forced")) for t in facts.txns.values()),
             "outputs": len(facts.outputs)}
    return {"valid": found.valid(), "anomalies": found.summary(), "stats": stats}


def _check_txn_inputs(facts: TxnFacts, txn_of_input: dict[str, set[str]],
                      found: Anomalies) -> None:
    for v in sorted(facts.deliveries):
        if v not in facts.in_attempts or (v not in facts.in_acked
                                          and facts.in_fails[v] == facts.in_attempts[v]):
            found.add("unexpected_input", v)
    for v in sorted(facts.in_acked):
        if v not in txn_of_input:
            found.add("lost_input", v)
    for txn_id in sorted(facts.txns):
        txn = facts.txns[txn_id]
        status = txn_status(txn["attempts"])
        if status == "committed":
            missing = [o for o in txn["outputs"] if o not in facts.outputs]
            if missing:
                found.add("lost_output", {"txn": txn_id, "missing": missing})
        elif status == "aborted":
            _check_redelivered(facts, txn_id, txn, found)


def _check_redelivered(facts: TxnFacts, txn_id: str, txn: dict[str, Any],
                       found: Anomalies) -> None:
    """Each input of an aborted transaction is delivered again after the delivery it used."""
    for v, receipt in zip(txn["inputs"], txn["receipts"], strict=True):
        used = [t for r, t in facts.deliveries.get(v, []) if r == receipt]
        later = [t for r, t in facts.deliveries.get(v, []) if r != receipt
                 and (not used or t > used[0])]
        if not later:
            found.add("not_redelivered", {"txn": txn_id, "input": v, "receipt": receipt})
