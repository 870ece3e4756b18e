"""The client commands of `raftmq`: status, queue, topic, publish, receive, dlq, producer.

`raftmq <command> ...` (node/cli.py hands these over) or `python -m raftmq.cli <command> ...`.
Every command takes `--url` (comma-separated node URLs; else $RAFTMQ_URL; else the local
`raftmq cluster up` ports 8701-8703), `--json` (machine output) and `--token` ($RAFTMQ_TOKEN).
Errors print one line `raftmq: <code>: <message>` on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from raftmq.client import Client
from raftmq.errors import RaftmqError
from raftmq.models import Message, TopicMessage

ENV_URL = "RAFTMQ_URL"
ENV_TOKEN = "RAFTMQ_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8701,http://127.0.0.1:8702,http://127.0.0.1:8703"
STDIN_BATCH_MAX = 100          # stdin lines per publish request
CELL_CHARS_MAX = 60            # table cells are cut to this width
FOLLOW_WAIT_S = 20.0           # long-poll wait of --follow (the node's maximum)

Handler = Callable[[Client, argparse.Namespace, "Output"], int]


class Output:
    """Prints either human text or JSON (one document, or one line per item when streaming)."""

    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out

    def doc(self, value: Any, human: Callable[[], str]) -> None:
        text = json.dumps(jsonable(value), indent=2) if self.as_json else human()
        if text:
            print(text, file=self.out, flush=True)

    def line(self, value: Any, human: str) -> None:
        text = json.dumps(jsonable(value), separators=(",", ":")) if self.as_json else human
        print(text, file=self.out, flush=True)


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = str(value)
    return text if len(text) <= CELL_CHARS_MAX else text[:CELL_CHARS_MAX - 1] + "…"


def key_values(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += key_values(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def kv_text(data: dict[str, Any]) -> str:
    pairs = key_values(data)
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {_kv_value(v)}" for k, v in pairs)


def _kv_value(value: Any) -> str:
    if isinstance(value, list):
        return json.dumps(jsonable(value)) if value else "-"
    return _cell(value) if not isinstance(value, str) else value


# -- status -------------------------------------------------------------------------------------


def cmd_status(mq: Client, args: argparse.Namespace, out: Output) -> int:
    st = mq.cluster_status()

    def human() -> str:
        head = (f"cluster {st.get('cluster')}  leader {st.get('leader') or '-'}  term "
                f"{st.get('term')}  commit {st.get('commit_index')}  applied "
                f"{st.get('applied_index')}  (answered by {st.get('node')})")
        rows = [[m.get("id"), m.get("role"), m.get("http"), m.get("raft"), m.get("reachable")]
                for m in st.get("members", [])]
        return head + "\n" + table(["id", "role", "http", "raft", "reachable"], rows)

    out.doc(st, human)
    return 0


# -- queues -------------------------------------------------------------------------------------

QUEUE_CONFIG_FLAGS: list[tuple[str, type, str]] = [
    ("visibility_timeout_s", float, "seconds a received message stays invisible (30)"),
    ("max_receives", int, "receives before dead-lettering (0 = unlimited)"),
    ("dead_letter_queue", str, "queue for dead letters (created if missing)"),
    ("message_ttl_s", float, "message time to live (0 = none)"),
    ("max_length", int, "maximum messages (0 = none)"),
    ("max_bytes", int, "maximum bytes (0 = none)"),
    ("overflow", str, "reject | drop_oldest"),
    ("delay_s", float, "default delivery delay"),
    ("dedup_window_s", float, "dedup id window (300)"),
    ("expires_s", float, "delete after this long without consumers (0 = never)"),
    ("durability", str, "fsync | memory"),
]


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def cmd_queue_ls(mq: Client, args: argparse.Namespace, out: Output) -> int:
    queues = mq.list_queues()
    rows = []
    for q in queues:
        s = q.get("stats", {})
        rows.append([q.get("name"), s.get("ready"), s.get("in_flight"), s.get("delayed"),
                     s.get("published_total"), s.get("acked_total"),
                     s.get("dead_lettered_total")])
    headers = ["name", "ready", "in_flight", "delayed", "published", "acked", "dead_lettered"]
    out.doc(queues, lambda: table(headers, rows) if rows else "no queues")
    return 0


def cmd_queue_create(mq: Client, args: argparse.Namespace, out: Output) -> int:
    config = {name: _num(getattr(args, name)) for name, _, _ in QUEUE_CONFIG_FLAGS
              if getattr(args, name) is not None}
    queue = mq.create_queue(args.name, **config)
    out.doc(queue, lambda: f"queue {args.name} ready\n" + kv_text(queue))
    return 0


def cmd_queue_info(mq: Client, args: argparse.Namespace, out: Output) -> int:
    info = mq.queue_info(args.name)
    out.doc(info, lambda: kv_text(info))
    return 0


def cmd_queue_purge(mq: Client, args: argparse.Namespace, out: Output) -> int:
    n = mq.purge(args.name)
    out.doc({"purged": n}, lambda: f"purged {n} message(s) from {args.name}")
    return 0


def cmd_queue_rm(mq: Client, args: argparse.Namespace, out: Output) -> int:
    mq.delete_queue(args.name)
    out.doc({"deleted": args.name}, lambda: f"deleted queue {args.name}")
    return 0


def cmd_dlq_redrive(mq: Client, args: argparse.Namespace, out: Output) -> int:
    moved = mq.redrive(args.name, args.to, args.max)
    out.doc({"moved": moved}, lambda: f"moved {moved} message(s) from {args.name} to {args.to}")
    return 0


# -- topics -------------------------------------------------------------------------------------


def cmd_topic_ls(mq: Client, args: argparse.Namespace, out: Output) -> int:
    topics = mq.list_topics()
    rows = []
    for t in topics:
        parts = t.get("partitions", [])
        count = len(parts) if isinstance(parts, list) else parts
        held = sum(p.get("messages", 0) for p in parts) if isinstance(parts, list) else None
        rows.append([t.get("name"), count, held, t.get("published_total"),
                     ",".join(t.get("groups", [])) or None])
    headers = ["name", "partitions", "messages", "published", "groups"]
    out.doc(topics, lambda: table(headers, rows) if rows else "no topics")
    return 0


def cmd_topic_create(mq: Client, args: argparse.Namespace, out: Output) -> int:
    retention = {k: getattr(args, k) for k in ("max_messages", "max_bytes", "max_age_s")
                 if getattr(args, k) is not None}
    config = {"durability": args.durability} if args.durability else {}
    topic = mq.create_topic(args.name, args.partitions, retention or None, **config)
    out.doc(topic, lambda: f"topic {args.name} ready\n" + kv_text(topic))
    return 0


def cmd_topic_info(mq: Client, args: argparse.Namespace, out: Output) -> int:
    info = mq.topic_info(args.name)

    def human() -> str:
        parts = info.get("partitions", [])
        rest = {k: v for k, v in info.items() if k != "partitions"}
        if not isinstance(parts, list):
            return kv_text(info)
        rows = [[p.get("partition"), p.get("low_watermark"), p.get("high_watermark"),
                 p.get("messages"), p.get("bytes")] for p in parts]
        return kv_text(rest) + "\n\n" + table(["partition", "low", "high", "messages", "bytes"],
                                              rows)

    out.doc(info, human)
    return 0


def cmd_topic_rm(mq: Client, args: argparse.Namespace, out: Output) -> int:
    mq.delete_topic(args.name)
    out.doc({"deleted": args.name}, lambda: f"deleted topic {args.name}")
    return 0


def _print_topic_message(out: Output, msg: TopicMessage) -> None:
    key = f" key={msg.key}" if msg.key is not None else ""
    out.line(msg, f"{msg.partition}:{msg.offset}{key}\t{_printable(msg.body)}")


def cmd_topic_read(mq: Client, args: argparse.Namespace, out: Output) -> int:
    if args.follow:
        for msg in mq.topic_messages(args.name, args.partition, args.offset, wait_s=args.wait_s,
                                     max=args.max):
            _print_topic_message(out, msg)
        return 0  # pragma: no cover - follow ends with Ctrl-C
    batch = mq.read_topic(args.name, args.partition, args.offset, args.max, args.wait_s,
                          args.from_time)
    for msg in batch.messages:
        _print_topic_message(out, msg)
    if not out.as_json:
        print(f"next offset {batch.next_offset} (low {batch.low_watermark}, high "
              f"{batch.high_watermark})", file=sys.stderr)
    return 0


# -- publish / receive --------------------------------------------------------------------------


def _printable(body: str | bytes) -> str:
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(body).decode("ascii")


def _message_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.header:
        fields["headers"] = dict(_pair(h) for h in args.header)
    for name in ("priority", "group", "delay_s", "dedup_id", "ttl_s"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = _num(value)
    return fields


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--header {text!r}: expected KEY=VALUE")
    return key, value


def _body_batches(args: argparse.Namespace, stdin: TextIO) -> Iterable[list[str]]:
    if args.bodies and args.bodies != ["-"]:
        yield list(args.bodies)
        return
    batch: list[str] = []
    for line in stdin:
        batch.append(line.rstrip("\n"))
        if len(batch) >= args.batch:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_publish(mq: Client, args: argparse.Namespace, out: Output) -> int:
    if args.dedup_id is not None and args.bodies and len(args.bodies) > 1:
        raise ValueError("--dedup-id names one message: publish one BODY with it")
    fields = _message_fields(args)
    total = 0
    for bodies in _body_batches(args, sys.stdin):
        if args.topic:
            msgs = [{"body": b, "headers": fields.get("headers", {})} for b in bodies]
            tres = mq.publish_topic(args.target, msgs, key=args.key)
            refs = [f"{m.partition}:{m.offset}" for m in tres.messages]
            out.line(tres, f"published {len(refs)} to {args.target}: {' '.join(refs)}")
        else:
            qres = mq.publish(args.target, [{"body": b, **fields} for b in bodies])
            dup = " (duplicate)" if qres.duplicate else ""
            out.line(qres, f"published {len(qres.ids)} to {args.target}{dup}: "
                           f"{' '.join(qres.ids)}")
        total += len(bodies)
    if total == 0:
        raise ValueError("nothing to publish: give BODY arguments or lines on stdin")
    return 0


def _print_message(out: Output, msg: Message) -> None:
    out.line(msg, f"{msg.id}\t{_printable(msg.body)}")


def cmd_receive(mq: Client, args: argparse.Namespace, out: Output) -> int:
    ack_mode = "manual"
    total = 0
    while True:
        msgs = mq.receive(args.target, args.max, args.wait_s, args.visibility_timeout_s, ack_mode)
        for msg in msgs:
            _print_message(out, msg)
        if msgs and args.ack:
            mq.ack(args.target, msgs)
        total += len(msgs)
        if not args.follow:
            break
    if not out.as_json and total and not args.ack:
        print(f"({total} message(s) left in flight: redelivered after the visibility timeout; "
              "use --ack to remove them)", file=sys.stderr)
    if not out.as_json and not total:
        print("no messages", file=sys.stderr)
    return 0


def cmd_producer_register(mq: Client, args: argparse.Namespace, out: Output) -> int:
    ref = mq.register_producer()
    out.doc(ref, lambda: f"producer {ref.id} epoch {ref.epoch}")
    return 0


# -- parser -------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", default=argparse.SUPPRESS,
                   help=f"node URL(s), comma-separated (${ENV_URL}; default {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable JSON output")
    p.add_argument("--token", default=argparse.SUPPRESS, help=f"bearer token (${ENV_TOKEN})")
    p.add_argument("--timeout-s", type=float, default=argparse.SUPPRESS,
                   help="give up a call after this long, retries included (30)")
    return p


def _sub(parent: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = parent.add_parser(name, parents=[_common()], help=help_text,
                                                   description=help_text)
    p.set_defaults(handler=handler)
    return p


def _queue_parser(sub: Any) -> None:
    q = sub.add_parser("queue", help="queues: ls, create, info, purge, rm").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    _sub(q, "ls", cmd_queue_ls, "list queues with their depths")
    create = _sub(q, "create", cmd_queue_create, "create a queue (idempotent)")
    create.add_argument("name")
    for name, kind, text in QUEUE_CONFIG_FLAGS:
        create.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)
    for name, handler, text in (("info", cmd_queue_info, "a queue's config and stats"),
                                ("purge", cmd_queue_purge, "remove every ready message"),
                                ("rm", cmd_queue_rm, "delete a queue")):
        _sub(q, name, handler, text).add_argument("name")


def _topic_parser(sub: Any) -> None:
    t = sub.add_parser("topic", help="topics: ls, create, info, rm, read").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    _sub(t, "ls", cmd_topic_ls, "list topics")
    create = _sub(t, "create", cmd_topic_create, "create a topic (idempotent)")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    create.add_argument("--max-messages", type=int, help="retention: messages per partition")
    create.add_argument("--max-bytes", type=int, help="retention: bytes per partition")
    create.add_argument("--max-age-s", type=int, help="retention: age (604800)")
    create.add_argument("--durability", choices=["fsync", "memory"])
    _sub(t, "info", cmd_topic_info, "a topic's partitions and watermarks").add_argument("name")
    _sub(t, "rm", cmd_topic_rm, "delete a topic").add_argument("name")
    read = _sub(t, "read", cmd_topic_read, "read a partition from an offset")
    read.add_argument("name")
    read.add_argument("--partition", type=int, default=0)
    read.add_argument("--offset", type=int, default=0)
    read.add_argument("--from-time", type=int, help="ms since the epoch (instead of --offset)")
    read.add_argument("--max", type=int, default=100)
    read.add_argument("--wait-s", type=float, default=0.0, help="long poll up to this long")
    read.add_argument("--follow", "-f", action="store_true", help="keep reading (Ctrl-C stops)")


def _client_parsers(sub: Any) -> None:
    _sub(sub, "status", cmd_status, "cluster members, roles and the leader")
    pub = _sub(sub, "publish", cmd_publish, "publish BODY... (or stdin lines) to a queue")
    pub.add_argument("target", metavar="QUEUE")
    pub.add_argument("bodies", nargs="*", metavar="BODY", help="bodies; none or '-' reads stdin")
    pub.add_argument("--topic", action="store_true", help="QUEUE names a topic")
    pub.add_argument("--key", help="topic partition key")
    pub.add_argument("--header", "-H", action="append", metavar="K=V")
    pub.add_argument("--priority", type=int)
    pub.add_argument("--group")
    pub.add_argument("--delay-s", type=float)
    pub.add_argument("--dedup-id")
    pub.add_argument("--ttl-s", type=float)
    pub.add_argument("--batch", type=int, default=STDIN_BATCH_MAX,
                     help=f"stdin lines per request ({STDIN_BATCH_MAX})")
    rec = _sub(sub, "receive", cmd_receive, "receive messages from a queue")
    rec.add_argument("target", metavar="QUEUE")
    rec.add_argument("--max", type=int, default=10)
    rec.add_argument("--wait-s", type=float, default=0.0, help="long poll up to this long")
    rec.add_argument("--visibility-timeout-s", type=float)
    rec.add_argument("--ack", action="store_true", help="ack what was printed")
    rec.add_argument("--follow", "-f", action="store_true",
                     help="keep receiving with 20 s long polls (Ctrl-C stops)")
    dlq = sub.add_parser("dlq", help="dead letters: redrive").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    red = _sub(dlq, "redrive", cmd_dlq_redrive, "move messages out of a dead-letter queue")
    red.add_argument("name", metavar="QUEUE")
    red.add_argument("--to", required=True, metavar="QUEUE")
    red.add_argument("--max", type=int, help="move at most this many")
    prod = sub.add_parser("producer", help="producers: register").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    reg = _sub(prod, "register", cmd_producer_register,
               "register a producer id (again: bump its epoch, fencing the old one)")
    reg.add_argument("--id", dest="producer_id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raftmq", parents=[_common()],
                                     description="raftmq client commands")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _client_parsers(sub)
    _queue_parser(sub)
    _topic_parser(sub)
    return parser


def _validate(args: argparse.Namespace) -> None:
    for name in ("max", "batch", "partitions"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1")
    if getattr(args, "follow", False) and not args.wait_s:
        args.wait_s = FOLLOW_WAIT_S  # --follow long-polls; never a busy loop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Output(bool(getattr(args, "json", False)), sys.stdout)
    url = getattr(args, "url", None) or os.environ.get(ENV_URL) or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get(ENV_TOKEN) or None
    try:
        _validate(args)
        with Client(url, token=token, timeout_s=getattr(args, "timeout_s", 30.0),
                    producer_id=getattr(args, "producer_id", None)) as mq:
            handler: Handler = args.handler
            return handler(mq, args, out)
    except RaftmqError as exc:
        where = f" (node {exc.node})" if exc.node else ""
        print(f"raftmq: {exc.code}: {exc.message}{where}", file=sys.stderr)
        if exc.code == "connection_failed":
            print(f"raftmq: is a node running at {url}? (--url or ${ENV_URL})", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"raftmq: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
