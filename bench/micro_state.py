"""The state machine alone: microseconds per message of publish and of receive + ack.

  PYTHONPATH=. .venv/bin/python bench/micro_state.py [--messages 200000] [--reps 3]

No network, no Raft: `BrokerState.apply` as every node runs it, so one node's share of the
cluster's CPU per message. The answering node reads every answer (receipts for the acks);
a follower applies the same commands and drops the answers: "follower" replays the receive
commands on a second state without reading them. Best of `--reps` (the least disturbed
run). Compare two commits by running it in two checkouts, interleaved.
"""

from __future__ import annotations

import argparse
import os
import time

from storage.state import BrokerState

T0 = 1_700_000_000_000
BATCH = 1000


def one_run(messages: int, size: int) -> tuple[float, float, float]:
    """Seconds per message: publish, receive + ack (answering node), the same on a follower."""
    states = [BrokerState(), BrokerState()]
    for state in states:
        state.apply({"op": "queue.create", "queue": "q", "config": {}}, T0)
    batches = [[{"body": os.urandom(size), "headers": {}} for _ in range(BATCH)]
               for _ in range(messages // BATCH)]
    start = time.perf_counter()
    for i, msgs in enumerate(batches):
        states[0].apply({"op": "queue.publish", "queue": "q", "messages": msgs}, T0 + i)
    publish_s = time.perf_counter() - start
    for i, msgs in enumerate(batches):
        states[1].apply({"op": "queue.publish", "queue": "q", "messages": msgs}, T0 + i)
    start = time.perf_counter()
    receipts: list[str] = []
    cmds: list[dict[str, object]] = []
    for i in range(len(batches) + 1):
        cmd: dict[str, object] = {"op": "queue.receive", "queue": "q", "max_messages": BATCH}
        if receipts:
            cmd["ack_receipts"] = receipts
        cmds.append(cmd)
        receipts = [m["receipt"] for m in states[0].apply(cmd, T0 + 10_000 + i)["messages"]]
    receive_s = time.perf_counter() - start
    assert not receipts, "every message was received and acked"
    start = time.perf_counter()
    for i, cmd in enumerate(cmds):
        states[1].apply(cmd, T0 + 10_000 + i)
    follower_s = time.perf_counter() - start
    assert not states[1].queues.queues["q"].msgs, "the follower acked every message too"
    return publish_s / messages, receive_s / messages, follower_s / messages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    runs = [one_run(a.messages, a.size) for _ in range(a.reps)]
    print(f"publish {min(r[0] for r in runs) * 1e6:.2f} us/msg, "
          f"receive + ack {min(r[1] for r in runs) * 1e6:.2f} us/msg "
          f"(on a follower {min(r[2] for r in runs) * 1e6:.2f}) "
          f"(best of {a.reps}, {a.messages:,} messages of {a.size} bytes)")


if __name__ == "__main__":
    main()
