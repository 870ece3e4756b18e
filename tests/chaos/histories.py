"""A tiny builder for hand-written histories used by the checker tests."""

from __future__ import annotations

from typing import Any

from chaos.history import FAIL, INFO, INVOKE, NEMESIS, OK, Op

VT_S = 10


class H:
    """Builds a history; every op takes one time step of 1 ms (time_ns grows)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._receipts = 0

    def _op(self, process: str, type_: str, f: str, value: Any, node: str | None = "n1") -> Op:
        op: Op = {"index": len(self.ops), "time_ns": len(self.ops) * 1_000_000,
                  "process": process, "type": type_, "f": f, "value": value, "node": node}
        self.ops.append(op)
        return op

    def call(self, process: str, f: str, value: Any, type_: str, result: Any) -> H:
        self._op(process, INVOKE, f, value)
        self._op(process, type_, f, result)
        return self

    # queues -----------------------------------------------------------------------------
    def publish(self, values: list[str], type_: str = OK, producer: str = "p1",
                seq: int = 0, process: str = "w1") -> H:
        ids = [f"id-{v}" for v in values]
        return self.call(process, "publish",
                         {"values": values, "producer": producer, "seq": seq}, type_,
                         {"ids": ids} if type_ == OK else {"error": "x"})

    def receive(self, msgs: list[tuple[str, int, int]], process: str = "c1",
                ids: dict[str, str] | None = None) -> list[str]:
        """msgs: (value, receive_count, server_ms of delivery). Returns the receipts."""
        out, receipts = [], []
        for value, count, server_ms in msgs:
            self._receipts += 1
            receipt = f"r{self._receipts}"
            receipts.append(receipt)
            out.append({"value": value, "id": (ids or {}).get(value, f"id-{value}"),
                        "receipt": receipt, "receive_count": count,
                        "lease_expires_at": server_ms + VT_S * 1000})
        self.call(process, "receive", {"max": 10, "vt_s": VT_S}, OK, {"messages": out})
        return receipts

    def ack(self, receipts: list[str], type_: str = OK, stale: list[str] | None = None,
            process: str = "c1") -> H:
        return self.call(process, "ack", {"receipts": receipts}, type_,
                         {"acked": len(receipts), "stale": stale or []})

    def nack(self, receipts: list[str], process: str = "c1") -> H:
        return self.call(process, "nack", {"receipts": receipts}, OK,
                         {"nacked": len(receipts), "stale": []})

    def final_queue(self, state: dict[str, dict[str, int] | None]) -> H:
        self._op(NEMESIS, INFO, "note", {"final_queue_state": state}, None)
        return self

    # topics -----------------------------------------------------------------------------
    def tpublish(self, values: list[str], offsets: list[tuple[int, int]] | None,
                 type_: str = OK, producer: str = "p1", seq: int = 0) -> H:
        return self.call("w1", "topic-publish",
                         {"topic": "t", "values": values, "producer": producer, "seq": seq},
                         type_, {"offsets": offsets} if type_ == OK else {})

    def tread(self, log: list[tuple[int, str]], partition: int = 0, node: str = "n1",
              final: bool = False, hw: int | None = None, local: bool = False) -> H:
        consistency = "local" if final or local else "linearizable"
        high = hw if hw is not None else (log[-1][0] + 1 if log else 0)
        return self.call(f"r-{node}", "topic-read",
                         {"topic": "t", "partition": partition, "offset": 0, "node": node,
                          "final": final, "consistency": consistency}, OK,
                         {"messages": [list(x) for x in log], "high_watermark": high})

    def tsub(self, events: list[tuple[int, int, str]], node: str = "n1") -> H:
        """One live subscription that delivered (partition, offset, value) events."""
        return self.call(f"s-{node}", "topic-subscribe",
                         {"topic": "t", "stream": f"s-{node}.1", "node": node}, OK,
                         {"messages": [list(e) for e in events], "end": "closed"})

    def commit(self, offset: int, type_: str = OK) -> H:
        return self.call("g1", "group-commit", {"topic": "t", "group": "g", "offsets":
                                                [{"partition": 0, "offset": offset}]},
                         type_, {})

    def committed(self, offset: int | None) -> H:
        return self.call("g1", "group-read", {"topic": "t", "group": "g"}, OK,
                         {"partitions": [{"partition": 0, "committed": offset}]})

    # transactions (chaos/txn.py) --------------------------------------------------------
    def xpublish(self, values: list[str], type_: str = OK) -> H:
        return self.call("x1", "txn-in-publish", {"values": values, "producer": "px",
                                                   "seq": 0}, type_, {})

    def xreceive(self, msgs: list[tuple[str, str]]) -> H:
        """msgs: (input value, receipt)."""
        out = [{"value": v, "id": f"id-{v}", "receipt": r, "receive_count": 1}
               for v, r in msgs]
        return self.call("t1", "txn-receive", {"queue": "chaos-in"}, OK, {"messages": out})

    def txn(self, txn_id: str, inputs: list[str], receipts: list[str], type_: str = OK,
            outputs: list[str] | None = None) -> H:
        from chaos.txn import output_body

        outs = outputs if outputs is not None else [output_body(v, txn_id) for v in inputs]
        return self.call("t1", "txn", {"txn": txn_id, "inputs": inputs, "receipts": receipts,
                                       "outputs": outs, "forced": False}, type_, {})

    def xout(self, bodies: list[str], ids: list[str] | None = None) -> H:
        msgs = [{"value": b, "id": (ids or [f"out-{b}" for b in bodies])[i], "receipt": "q",
                 "receive_count": 1} for i, b in enumerate(bodies)]
        return self.call("o1", "txn-out-receive", {"queue": "chaos-out"}, OK,
                         {"messages": msgs})

    def xdrained(self, drained: bool = True) -> H:
        self._op(NEMESIS, INFO, "note", {"txn_drained": drained}, None)
        return self

    def nemesis(self, f: str, fid: int, fault: str = "kill") -> H:
        self._op(NEMESIS, INFO, f, {"id": fid, "fault": fault, "targets": ["n1"]}, None)
        return self


__all__ = ["FAIL", "H", "INFO", "OK"]
