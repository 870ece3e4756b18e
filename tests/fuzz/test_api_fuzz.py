"""Hostile input against a real 3-node cluster, for every route of the served OpenAPI.

Whatever a client sends, a node must answer: never a 5xx (except 503/504 with retryable=true),
never hang, every error in API.md's shape {"error": {"code", "message", "retryable"}} with a code
registered in storage/errors.py (status and retryable as registered), and the cluster still
publishes and receives afterwards with no handler crash in any node's log.

That includes input aiohttp's own HTTP parser refuses (a request line or header over 8190 bytes,
too many headers, an unknown Content-Encoding): node/server.py answers it 400 `invalid_request`
in the same JSON shape (docs/security.md section 6), so no exception is allowed here.

`FUZZ_EXAMPLES` raises the number of generated requests (`make fuzz`).
"""

from __future__ import annotations

import gzip
import http.client as http_client
import json
import math
import re
import string
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import KINDS
from tests.fuzz.conftest import fuzz_examples
from tests.support.cluster import Cluster, http

REQUEST_TIMEOUT_S = 30.0  # > wait_s_max (20 s): a request still unanswered by then hangs
QUEUE, TOPIC, GROUP = "fz-q", "fz.t", "fz-g"
CANARY, CANARY_MESSAGES = "fz-canary", 20  # acked before the fuzzing, checked after it
PATH_PARAM = re.compile(r"\{(\w+)\}")
PATH_VALUES = {"queue": QUEUE, "topic": TOPIC, "group": GROUP, "p": "0", "binding": "b-1",
               "asset": "console.js"}
METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS")
CONTENT_TYPES = ("application/json", "application/msgpack", "text/plain", "",
                 "application/x-www-form-urlencoded", "application/xml",
                 "multipart/form-data; boundary=x", "application/json; charset=utf-16",
                 "application/msgpack; charset=latin-1", "a/b/c;;;=", "\u00e9/\u00e9")
CONCURRENT_WORKERS, CONCURRENT_MESSAGES = 6, 60
PATH_SAMPLE_STEP = 7  # routes after the first of a parameter get every 7th hostile segment


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body_schema: dict[str, Any] | None
    query: tuple[str, ...]


# ----- sending and checking -----------------------------------------------------------------

def send(port: int, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> Answer:
    """One raw request (any bytes, any header); checks the answer against the contract."""
    conn = http_client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value.encode("utf-8", "surrogateescape"))
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        try:
            resp = conn.getresponse()
        except TimeoutError:
            raise AssertionError(f"{method} {path[:80]}: no answer in {REQUEST_TIMEOUT_S}s "
                                 "(hang)") from None
        ctype = resp.getheader("Content-Type") or ""
        streaming = resp.status == 200 and ctype.startswith("text/event-stream")
        data = b"" if streaming or method == "HEAD" else resp.read()
    finally:
        conn.close()
    answer = Answer(resp.status, ctype, data)
    check_answer(answer, f"{method} {path[:120]}", head=method == "HEAD")
    return answer


def check_answer(answer: Answer, what: str, head: bool = False) -> None:
    status = answer.status
    if status < 400:
        return
    if head:  # a HEAD answer has no body to check
        assert status < 500, f"{what}: {status}"
        return
    err = decode_error(answer, what)
    code = err.get("code")
    assert isinstance(code, str) and code in KINDS, f"{what}: unregistered code {code!r}"
    assert isinstance(err.get("message"), str) and err["message"], f"{what}: no message"
    assert err.get("retryable") is KINDS[code].retryable, f"{what}: retryable of {code}"
    assert status == KINDS[code].status, f"{what}: {code} answered as {status}"
    if status >= 500:
        assert status in (503, 504), f"{what}: server error {status} {err}"


def decode_error(answer: Answer, what: str) -> dict[str, Any]:
    try:
        if answer.content_type.startswith("application/msgpack"):
            doc = msgpack.unpackb(answer.body, raw=False)
        else:
            assert answer.content_type.startswith("application/json"), \
                f"{what}: {answer.status} error as {answer.content_type!r}: {answer.body[:200]!r}"
            doc = json.loads(answer.body)
    except ValueError as exc:
        raise AssertionError(f"{what}: undecodable error body {answer.body[:200]!r}") from exc
    assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), \
        f"{what}: error body not in API.md's shape: {answer.body[:200]!r}"
    err: dict[str, Any] = doc["error"]
    return err


# ----- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fz(shared_cluster: Cluster) -> Iterator[Cluster]:
    """The shared cluster with a queue and a topic the fuzzed paths name; after the module, the
    cluster must still serve (checked by the last test)."""
    url = shared_cluster.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/{QUEUE}", {}).status in (200, 201)
    assert http("PUT", f"{url}/v1/topics/{TOPIC}", {"partitions": 2}).status in (200, 201)
    assert http("PUT", f"{url}/v1/queues/{CANARY}", {}).status in (200, 201)
    canary = {"messages": [{"body": f"canary-{i}"} for i in range(CANARY_MESSAGES)]}
    assert http("POST", f"{url}/v1/queues/{CANARY}/messages", canary).status == 201
    yield shared_cluster


@pytest.fixture(scope="module")
def routes(fz: Cluster) -> list[Route]:
    """Every operation of the OpenAPI document the node serves."""
    doc = http("GET", f"{fz.nodes[0].url}/v1/openapi.json").body
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            query = tuple(p["name"] for p in op.get("parameters", []) if p["in"] == "query")
            out.append(Route(method.upper(), path, body.get("schema"), query))
    assert len(out) >= 35, "the served OpenAPI lost routes"
    return out


def path_params(path: str) -> list[str]:
    return PATH_PARAM.findall(path)


def fill(path: str, **values: str) -> str:
    """The route's path with its parameters filled (the fixtures' names unless given)."""
    for name in path_params(path):
        path = path.replace("{" + name + "}", values.get(name, PATH_VALUES.get(name, "fz-x")))
    if path.endswith(f"/queues/{QUEUE}") or path.endswith(f"/topics/{TOPIC}"):
        path += "-x"  # PUT/DELETE on the fixtures' own names would delete or reconfigure them
    return path


# ----- hostile values -----------------------------------------------------------------------

FORBIDDEN_NAME_CHARS = [c for c in map(chr, range(0x80))
                        if c not in string.ascii_letters + string.digits + "_.-"]
HOSTILE_NUMBERS = [-1, -0.5, 0, 2**31, 2**53 + 1, 2**63, 2**64 - 1, -(2**63), 10**30, 1e308,
                   -1e308, 1e-300, 0.5, math.inf, -math.inf, math.nan]
HOSTILE_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "\udfff\ud800", "\u202e", "\U0001F600" * 50,
                "x" * 5000, "../../etc/passwd", "%00", "${jndi:x}", "' OR 1=1 --", ".", "..",
                "*", "#", "a.*.#", "http://127.0.0.1:9/", "manual", "auto", "base64"]


def hostile() -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(), st.sampled_from(HOSTILE_NUMBERS),
                     st.integers(), st.floats(), st.sampled_from(HOSTILE_TEXT),
                     st.text(max_size=30), st.binary(max_size=30))
    return st.recursive(leaf, lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
        max_leaves=12)


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values near the schema (so the handler gets past the first check) mixed with junk."""
    if depth > 4:
        return hostile()
    kind = schema.get("type")
    if "enum" in schema:
        good: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif kind == "object":
        props = {k: from_schema(v, depth + 1) for k, v in schema.get("properties", {}).items()}
        good = st.fixed_dictionaries({}, optional=props)
    elif kind == "array":
        good = st.lists(from_schema(schema.get("items", {}), depth + 1), max_size=3)
    elif kind == "string":
        good = st.sampled_from([QUEUE, TOPIC, "x", "fz.*", "0.0", "1.1", "99.99"])
    elif kind == "integer":
        good = st.integers(schema.get("minimum", 0), min(schema.get("maximum", 5), 5))
    elif kind == "number":
        good = st.sampled_from([0, 0.25, 1])
    else:
        good = hostile()
    return st.one_of(good, good, hostile())


def encode(value: Any, ctype: str) -> bytes:
    if ctype.startswith("application/msgpack"):
        try:
            return bytes(msgpack.packb(value, use_bin_type=True))
        except (OverflowError, TypeError, ValueError, UnicodeEncodeError):
            pass  # not representable in msgpack (huge int, lone surrogate): send JSON instead
    return json.dumps(value, default=lambda b: b.decode("latin-1")).encode("utf-8", "surrogatepass")


# ----- the tests ----------------------------------------------------------------------------

@pytest.mark.timeout(max(300, fuzz_examples(100) // 5))  # long runs: ~65-100 ms per example
@settings(max_examples=fuzz_examples(100), deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_schema_fuzz_every_route(fz: Cluster, routes: list[Route], data: st.DataObject) -> None:
    """Bodies built from each route's schema with wrong types, huge, negative and non-finite
    numbers, junk strings and extra fields, as JSON or msgpack, to any node."""
    route = data.draw(st.sampled_from([r for r in routes if r.body_schema is not None]))
    node = data.draw(st.sampled_from(fz.nodes))
    ctype = data.draw(st.sampled_from(["application/json", "application/msgpack"]))
    value = data.draw(st.one_of(from_schema(route.body_schema or {}), hostile()))
    headers = {"Content-Type": ctype}
    if data.draw(st.booleans()):
        headers["Accept"] = data.draw(st.sampled_from(["application/msgpack", "*/*", "x/y"]))
    send(node.http_port, route.method, fill(route.path), encode(value, ctype), headers)


RAW_BODIES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("whitespace", b" \r\n\t "),
    ("deep JSON array", b"[" * 1000 + b"]" * 1000),
    ("deep JSON object", b'{"a":' * 1000 + b"1" + b"}" * 1000),
    ("deep JSON under the parser limit", b'{"a":' + b"[" * 500 + b"]" * 500 + b"}"),
    ("invalid UTF-8", b'{"messages": [{"body": "\xff\xfe\xc3"}]}'),
    ("bare invalid UTF-8", b"\xff\xfe\xfd\xfc"),
    ("UTF-16 with a lone surrogate", '{"to": "\ud800"}'.encode("utf-16-le", "surrogatepass")),
    ("BOM", b"\xef\xbb\xbf{}"),
    ("NaN", b'{"max_messages": NaN, "timeout_s": Infinity, "delay_s": -Infinity}'),
    ("huge exponent", b'{"max_messages": 1e999999, "timeout_s": 1e309}'),
    ("5000-digit integer", b'{"max_messages": ' + b"9" * 5000 + b"}"),
    ("duplicate keys", b'{"messages": 1, "messages": [{"body": "x"}]}'),
    ("top-level array", b"[1, 2, 3]"),
    ("top-level string", b'"x"'),
    ("truncated JSON", b'{"messages": [{"body": "x"'),
    ("lone surrogate escapes", b'{"receipts": ["\\ud800"], "headers": {"\\udfff": "x"}}'),
    ("NUL bytes", b'{"to": "a\\u0000b", "url": "http://\\u0000"}'),
    ("malformed msgpack", b"\xc1"),
    ("truncated msgpack", b"\x82\xa8messages\x91\x81\xa4body\xda\xff\xff"),
    ("deep msgpack", b"\x91" * 1000 + b"\xc0"),
    ("msgpack timestamp ext", b"\x81\xa4body\xd6\xff\x00\x00\x00\x01"),
    ("msgpack bad timestamp", b"\xd4\xff\x00"),
    ("msgpack ext type", b"\x81\xa8messages\xd5\x05ab"),
    ("msgpack int map keys", b"\x81\x01\x02"),
    ("msgpack bytes where text", b"\x81\xa2to\xc4\x03abc"),
    ("msgpack huge array header", b"\xdd\xff\xff\xff\xff"),
    ("msgpack huge str header", b"\x81\xa2to\xdb\xff\xff\xff\xff"),
]


def body_routes(routes: list[Route]) -> list[Route]:
    return [r for r in routes if r.body_schema is not None]


def test_raw_garbage_bodies_on_every_route(fz: Cluster, routes: list[Route]) -> None:
    """Malformed JSON and msgpack, deep nesting, invalid UTF-8, under every content type."""
    port = fz.nodes[1].http_port
    sent = 0
    for route in body_routes(routes):
        for i, (_, body) in enumerate(RAW_BODIES):
            ctype = CONTENT_TYPES[i % len(CONTENT_TYPES)]
            for content_type in {ctype, "application/json", "application/msgpack"}:
                send(port, route.method, fill(route.path), body, {"Content-Type": content_type})
                sent += 1
    assert sent >= len(body_routes(routes)) * len(RAW_BODIES)


def test_deep_json_is_refused_with_a_named_limit(fz: Cluster) -> None:
    port = fz.nodes[0].http_port
    for body in (b"[" * 1000 + b"]" * 1000, b'{"messages": ' + b"[" * 100 + b"]" * 100 + b"}"):
        answer = send(port, "POST", f"/v1/queues/{QUEUE}/messages", body,
                      {"Content-Type": "application/json"})
        assert answer.status == 400
    nested: Any = []
    for _ in range(40):
        nested = [nested]
    deep = msgpack.packb({"messages": nested})
    answer = send(port, "POST", f"/v1/queues/{QUEUE}/messages", deep,
                  {"Content-Type": "application/msgpack"})
    assert answer.status == 400 and b"nested deeper" in answer.body


def test_lone_surrogates_are_400_not_500(fz: Cluster) -> None:
    """Regression: JSON "\\ud800" in a header, group or topic key crashed the handler (500)."""
    port = fz.nodes[0].http_port
    cases = [
        ("POST", f"/v1/queues/{QUEUE}/messages",
         {"messages": [{"body": "x", "headers": {"k": "\ud800"}}]}),
        ("POST", f"/v1/queues/{QUEUE}/messages", {"messages": [{"body": "x", "group": "\ud800"}]}),
        ("POST", f"/v1/topics/{TOPIC}/messages", {"messages": [{"body": "x", "key": "\udfff"}]}),
        ("POST", "/v1/transactions",
         {"publish": [{"topic": TOPIC, "messages": [{"body": "x", "key": "\ud800"}]}]}),
        ("PUT", f"/v1/queues/{QUEUE}/push", {"url": "http://\ud800", "max_in_flight": 1}),
        ("POST", f"/v1/queues/{QUEUE}/request",
         {"message": {"body": "x", "headers": {"\ud800": "v"}}, "timeout_s": 0.1}),
    ]
    for method, path, value in cases:
        answer = send(port, method, path, encode(value, "application/json"),
                      {"Content-Type": "application/json"})
        assert answer.status == 400, (path, answer)
        assert decode_error(answer, path)["code"] == "invalid_request"


def test_a_receipt_with_superscript_digits_is_stale_not_500(fz: Cluster) -> None:
    port = fz.nodes[0].http_port
    for op in ("ack", "nack"):
        answer = send(port, "POST", f"/v1/queues/{QUEUE}/{op}",
                      json.dumps({"receipts": ["1.\u00b9"]}).encode(),
                      {"Content-Type": "application/json"})
        assert answer.status == 200, answer


def test_bad_content_encoding_is_400_not_500(fz: Cluster) -> None:
    """Regression: Content-Encoding gzip/deflate with a body that does not inflate was a 500."""
    port = fz.nodes[0].http_port
    body = b'{"messages": [{"body": "x"}]}'
    for coding in ("gzip", "deflate"):
        answer = send(port, "POST", f"/v1/queues/{QUEUE}/messages", body,
                      {"Content-Type": "application/json", "Content-Encoding": coding})
        assert answer.status == 400, (coding, answer)
    good = send(port, "POST", f"/v1/queues/{QUEUE}/messages", gzip.compress(body),
                {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert good.status == 201
    bomb = gzip.compress(b" " * (24 * 1024 * 1024))  # 24 MiB of spaces in ~24 KiB
    answer = send(port, "POST", f"/v1/queues/{QUEUE}/messages", bomb,
                  {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert answer.status == 413
    send(port, "POST", f"/v1/queues/{QUEUE}/messages", body,
         {"Content-Type": "application/json", "Content-Encoding": "br"})


def hostile_segments() -> list[str]:
    segs = [urllib.parse.quote(f"a{c}b", safe="") for c in FORBIDDEN_NAME_CHARS]
    segs += ["%00", "a%00", "%FF%FE", "%ED%A0%80", "%C3%A9", "%E2%80%AE", "%F0%9F%98%80",
             "..", ".", ".hidden", "-", "%2E%2E", "a%2Fb", "a" * 201, "a" * 5000, "%",
             "%zz", "a%", "+", "%20"]
    return segs


def test_hostile_path_segments_on_every_route(fz: Cluster, routes: list[Route]) -> None:
    """Names with every forbidden character, %00, unicode, invalid UTF-8, 5000 characters:
    every segment on the first route of each parameter, a sample of them on the others."""
    port = fz.nodes[2].http_port
    segments = hostile_segments()
    covered: set[str] = set()
    for route in routes:
        for param in path_params(route.path):
            sample = segments if param not in covered else segments[::PATH_SAMPLE_STEP]
            covered.add(param)
            for seg in sample:
                answer = send(port, route.method, fill(route.path, **{param: seg}),
                              b"{}", {"Content-Type": "application/json"})
                assert answer.status != 200 or param != "asset", f"/ui/{seg} was served"


HOSTILE_QUERY = ["", "-1", "0", "1e999", "nan", "inf", "-inf", "9" * 5000, "0x10", "1_0",
                 "\u0661", "%00", "%FF", "%ED%A0%80", "true", "[]", "a" * 3000, "local",
                 "linearizable", "#", "*.*.*", "0.0001"]


def test_hostile_query_parameters(fz: Cluster, routes: list[Route]) -> None:
    port = fz.nodes[1].http_port
    for route in routes:
        for name in route.query:
            for value in HOSTILE_QUERY:
                quoted = value if "%" in value else urllib.parse.quote(value, safe="")
                send(port, route.method, f"{fill(route.path)}?{name}={quoted}&{name}=2")


def test_wrong_methods_and_unknown_paths(fz: Cluster, routes: list[Route]) -> None:
    port = fz.nodes[0].http_port
    served: dict[str, set[str]] = {}
    for route in routes:
        served.setdefault(route.path, set()).add(route.method)
    for path, methods in served.items():
        for method in METHODS:
            if method in methods or (method == "HEAD" and "GET" in methods):
                continue
            answer = send(port, method, fill(path))
            assert answer.status == 405, (method, path, answer)
    for path in ("/", "/v2/queues", "/v1/queues/a/b/c/d", "/v1//queues", "//", "/%00",
                 "/v1/queues/" + QUEUE + "/messages/extra", "/v1/topics/t/partitions"):
        assert send(port, "GET", path).status == 404


def test_huge_and_strange_headers(fz: Cluster) -> None:
    """Header floods and oversized values: aiohttp's parser refuses them (400
    invalid_request, JSON) or the node answers in the contract; never a 5xx or a hang."""
    port = fz.nodes[0].http_port
    path = f"/v1/queues/{QUEUE}/messages"
    body = b'{"messages": [{"body": "x"}]}'
    json_ct = {"Content-Type": "application/json"}
    floods = [
        {f"X-F{i}": "v" for i in range(1000)},
        {f"X-F{i}": "v" * 4000 for i in range(100)},
        {"X-Big": "v" * 100_000},
        {"Authorization": "Bearer " + "t" * 8000},
        {"X-Request-Id": "r" * 8000},
        {"Accept": "application/msgpack;q=0.1, " * 300},
    ]
    for headers in floods:
        send(port, "POST", path, body, {**json_ct, **headers})
    odd = [
        {"Authorization": "Bearer \udcff\udcfe"},  # raw 0xff 0xfe bytes on the wire
        {"X-Request-Id": "\udcff" * 10},
        {"Accept": "application/msgpack"},
        {"Accept": "\u00e9"},
        {"Content-Type": "application/json; charset=\"\\"},
        {"Accept-Encoding": "gzip, br, zstd, *;q=0"},
        {"Expect": "100-continue"},
        {"Transfer-Encoding": "identity"},
    ]
    for headers in odd:
        send(port, "POST", path, body, {**json_ct, **headers})


def test_valid_traffic_is_unharmed_by_concurrent_garbage(fz: Cluster,
                                                         routes: list[Route]) -> None:
    """Garbage from several connections at once, while one producer publishes through every
    node: every publish is acknowledged, and every acknowledged message is delivered once, in
    order."""
    name, count = "fz-steady", CONCURRENT_MESSAGES
    assert http("PUT", f"{fz.nodes[0].url}/v1/queues/{name}", {}).status == 201
    targets = [(r, body) for r in body_routes(routes) for _, body in RAW_BODIES[::3]]

    def garbage(worker: int) -> int:
        node = fz.nodes[worker % len(fz.nodes)]
        for route, body in targets[worker::CONCURRENT_WORKERS]:
            send(node.http_port, route.method, fill(route.path), body,
                 {"Content-Type": CONTENT_TYPES[worker % len(CONTENT_TYPES)]})
        return worker

    with ThreadPoolExecutor(CONCURRENT_WORKERS) as pool:
        noise = [pool.submit(garbage, w) for w in range(CONCURRENT_WORKERS)]
        for i in range(count):
            url = fz.nodes[i % len(fz.nodes)].url
            r = http("POST", f"{url}/v1/queues/{name}/messages",
                     {"messages": [{"body": f"s{i}"}]}, timeout_s=REQUEST_TIMEOUT_S)
            assert r.status == 201, (i, r.status, r.body)
        assert sorted(f.result(timeout=REQUEST_TIMEOUT_S * 10) for f in noise) == \
            list(range(CONCURRENT_WORKERS))
    got = http("POST", f"{fz.nodes[1].url}/v1/queues/{name}/receive",
               {"max_messages": 1000, "ack": "auto"}).body["messages"]
    assert [m["body"] for m in got] == [f"s{i}" for i in range(count)]


def test_cluster_still_serves_after_the_fuzzing(fz: Cluster) -> None:
    """Last in the module: a normal publish / receive / ack works through every node, the
    messages acknowledged before the fuzzing are all there, and no node logged a crash."""
    urls = [n.url for n in fz.nodes]
    name = "fz-after"
    assert http("PUT", f"{urls[0]}/v1/queues/{name}", {}).status == 201
    sent = [f"m{i}" for i in range(len(urls))]
    for url, body in zip(urls, sent, strict=True):
        assert http("POST", f"{url}/v1/queues/{name}/messages",
                    {"messages": [{"body": body}]}).status == 201
    got = http("POST", f"{urls[1]}/v1/queues/{name}/receive",
               {"max_messages": 10, "wait_s": 5}).body["messages"]
    assert [m["body"] for m in got] == sent
    acked = http("POST", f"{urls[2]}/v1/queues/{name}/ack",
                 {"receipts": [m["receipt"] for m in got]}).body
    assert acked == {"acked": len(sent), "stale": []}
    canary = http("POST", f"{urls[0]}/v1/queues/{CANARY}/receive",
                  {"max_messages": 100, "ack": "auto"}).body["messages"]
    assert [m["body"] for m in canary] == [f"canary-{i}" for i in range(CANARY_MESSAGES)], \
        "messages acknowledged before the fuzzing were lost or changed"
    for node in fz.nodes:
        assert node.alive, f"{node.id} died during fuzzing:\n{fz.log_tail(node)}"
        crashes = crash_records(node.log_path.read_text(errors="replace"))
        assert not crashes, f"{node.id} logged {len(crashes)} crash(es):\n{crashes[0][:3000]}"


RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.M)


def crash_records(log: str) -> list[str]:
    """ERROR records and tracebacks in a node log, except aiohttp's own protocol noise: a
    header flood refused by its parser (logged from data_received, answered 400), and a body
    that does not inflate, which aiohttp logs again while draining it after our 400."""
    starts = [m.start() for m in RECORD_START.finditer(log)] + [len(log)]
    records = [log[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    bad = [r for r in records if "level=ERROR" in r or "level=CRITICAL" in r or "Traceback" in r]
    return [r for r in bad if not ("aiohttp.server" in r.splitlines()[0]
                                   and ("in data_received" in r
                                        or "Can not decode content-encoding" in r))]


def test_the_answer_checker_rejects_contract_violations() -> None:
    """The checker can fail (a test that cannot fail is a defect)."""
    def err(code: str, retryable: bool) -> bytes:
        return json.dumps({"error": {"code": code, "message": "m", "retryable": retryable}}
                          ).encode()

    json_ct = "application/json"
    violations = [
        Answer(500, json_ct, err("internal_error", True)),
        Answer(400, "text/plain; charset=utf-8", b"Bad Request"),
        Answer(400, json_ct, err("no_such_code", False)),
        Answer(400, json_ct, err("invalid_request", True)),
        Answer(404, json_ct, err("invalid_request", False)),
        Answer(400, json_ct, b'{"message": "flat"}'),
        Answer(400, json_ct, b"not json"),
    ]
    for answer in violations:
        with pytest.raises(AssertionError):
            check_answer(answer, "synthetic")
    check_answer(Answer(503, json_ct, err("no_leader", True)), "synthetic")
    with pytest.raises(AssertionError):  # parser refusals too must be in the JSON shape
        check_answer(Answer(400, "text/plain", b"Too many headers"), "synthetic")
    assert crash_records("2026-01-01 00:00:00,000 level=ERROR raftmq.node event=handler_crash\n"
                         "Traceback (most recent call last):\n")
