"""`raftmq cluster add-node` / `remove-node`: thin HTTP calls (docs/membership.md).

    raftmq cluster add-node --url URL --id ID --raft HOST:PORT --http HOST:PORT
    raftmq cluster remove-node --url URL --id ID

URL is any member's HTTP address (default $RAFTMQ_URL); --token (or $RAFTMQ_TOKEN) when the
cluster uses authentication. Exit 0 on success, 1 when the cluster refused, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

REQUEST_TIMEOUT_S_DEFAULT = 60.0  # the node answers once the change is committed (<= ~35 s)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"raftmq cluster {argv[0] if argv else 'add-node'}")
    parser.add_argument("command", choices=["add-node", "remove-node"])
    parser.add_argument("--url", default=os.environ.get("RAFTMQ_URL"),
                        help="any member's HTTP URL (default $RAFTMQ_URL)")
    parser.add_argument("--id", required=True, help="the node's id")
    parser.add_argument("--raft", help="add-node: the new node's Raft address host:port")
    parser.add_argument("--http", help="add-node: the new node's HTTP address host:port")
    parser.add_argument("--token", default=os.environ.get("RAFTMQ_TOKEN"))
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT_S_DEFAULT)
    opts = parser.parse_args(argv)
    if not opts.url:
        parser.error("--url (or $RAFTMQ_URL) is required")
    base = opts.url.split(",")[0].rstrip("/")
    if opts.command == "add-node":
        if not opts.raft or not opts.http:
            parser.error("add-node needs --raft HOST:PORT and --http HOST:PORT")
        method, path = "POST", "/v1/cluster/members"
        body: dict[str, Any] | None = {"id": opts.id, "raft": opts.raft, "http": opts.http}
    else:
        method, path = "DELETE", f"/v1/cluster/members/{urllib.parse.quote(opts.id, safe='')}"
        body = None
    status, answer = call(method, base + path, body, opts.token, opts.timeout)
    return report(opts, status, answer)


def call(method: str, url: str, body: dict[str, Any] | None, token: str | None,
         timeout_s: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
            return resp.status, _decode(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"error": {"code": "unreachable", "message": f"{url}: {exc}"}}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"error": {"code": "bad_answer", "message": raw[:200].decode(errors="replace")}}


def report(opts: argparse.Namespace, status: int, answer: Any) -> int:
    ok = 200 <= status < 300
    if opts.json:
        print(json.dumps({"status": status, "answer": answer}))
        return 0 if ok else 1
    if not ok:
        err = (answer or {}).get("error", {}) if isinstance(answer, dict) else {}
        print(f"raftmq cluster {opts.command}: {err.get('code', status)}: "
              f"{err.get('message', answer)}", file=sys.stderr)
        return 1
    verb = "added" if opts.command == "add-node" else "removed"
    print(f"{verb} {opts.id}; members now:")
    for m in answer.get("members", []):
        print(f"  {m['id']:<12} raft={m['raft']:<22} http={m['http']}")
    return 0
