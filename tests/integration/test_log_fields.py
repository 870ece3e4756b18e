"""Every log line of a node carries node, term and the commit/applied indexes (issue 8 item 3).

Operators grep one node's log for what happened at a given term or index; the fields come from a
logging filter reading the replica's current values (node/cli.py, replication/replica.py).
"""

from __future__ import annotations

import re

from tests.support.cluster import Cluster, http, wait_until

LINE_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} level=[A-Z]+ \S+ "
                     r"node=(?P<node>\S+) term=(?P<term>\d+|-) "
                     r"commit_index=(?P<commit>\d+|-) applied_index=(?P<applied>\d+|-) ")
ELECTION_RE = re.compile(r"event=election_started node=\S+ term=(?P<term>\d+)")
WRITES = 20


def prefix(line: str) -> re.Match[str]:
    m = LINE_RE.match(line)
    assert m, f"line without node/term/index fields: {line!r}"
    return m


def log_lines(cluster: Cluster, node_id: str) -> list[str]:
    node = next(n for n in cluster.nodes if n.id == node_id)
    text = node.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if re.match(r"^\d{4}-\d\d-\d\d ", line)]


def test_every_log_line_names_node_term_and_indexes(cluster: Cluster) -> None:
    n1 = cluster.nodes[0]
    assert http("PUT", f"{n1.url}/v1/queues/logs").status == 201
    for i in range(WRITES):
        r = http("POST", f"{n1.url}/v1/queues/logs/messages", {"messages": [{"body": f"{i}"}]})
        assert r.status == 201, r.body
    leader = cluster.leader()
    cluster.kill(leader)  # the survivors log an election, with the writes already committed
    survivors = [n for n in cluster.nodes if n.alive]
    wait_until(lambda: any(ELECTION_RE.search(line) and prefix(line)["commit"].isdigit()
                           and int(prefix(line)["commit"]) >= WRITES
                           for n in survivors for line in log_lines(cluster, n.id)),
               30, what="an election logged after the writes (an early one at start-up, "
                        "under load, must not end the wait)")
    for node in cluster.nodes:
        lines = log_lines(cluster, node.id)
        assert lines, f"{node.id} logged nothing"
        for line in lines:
            m = LINE_RE.match(line)
            assert m, f"{node.id}: line without node/term/index fields: {line!r}"
            assert m["node"] == node.id
            election = ELECTION_RE.search(line)
            if election:  # the prefix is read at the moment of logging: the new term
                assert m["term"] == election["term"], line
        started = [line for line in lines if "event=node_started" in line]
        assert started and prefix(started[0])["term"] != "-"  # the replica is running
    late = [prefix(line) for n in survivors for line in log_lines(cluster, n.id)
            if ELECTION_RE.search(line)]
    assert max(int(m["commit"]) for m in late if m["commit"] != "-") >= WRITES
