"""Authentication under hostile input, for every route of the served OpenAPI (docs/security.md).

A one-node cluster with a tokens file. Whatever the Authorization header holds (nothing, another
scheme, a prefix, a suffix or a one-character change of a real token, junk bytes, 8 KB), every
route but the documented open ones answers 401 `unauthorized` in API.md's shape, whatever the
body; a token of the wrong role gets 403 `forbidden` on every route its role does not cover,
and a token limited by a name glob gets 403 on every other name.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.test_api_fuzz import (
    PATH_VALUES,
    Route,
    decode_error,
    hostile_segments,
    path_params,
    send,
)
from tests.support.cluster import Cluster, http, running_cluster

ADMIN = "fuzz-admin-token-0123456789abcdef"
PRODUCER = "fuzz-producer-token-0123456789abcdef"
CONSUMER = "fuzz-consumer-token-0123456789abcdef"
ORDERS = "fuzz-orders-token-0123456789abcdef"
TOKENS = f"""
[[tokens]]
token = "{ADMIN}"
role = "admin"
[[tokens]]
token = "{PRODUCER}"
role = "producer"
[[tokens]]
token = "{CONSUMER}"
role = "consumer"
[[tokens]]
token = "{ORDERS}"
role = ["producer", "consumer"]
queues = "orders*"
topics = "orders.*"
"""
# the documented open paths (docs/security.md): probes, the API description, metrics by default
OPEN = {"/healthz", "/readyz", "/v1/openapi.json", "/docs", "/metrics", "/ui", "/ui/{asset}"}
STRANGERS = [
    None, "", "Bearer", "Bearer ", "Bearer  ", "Basic " + base64.b64encode(
        f"admin:{ADMIN}".encode()).decode(), f"Token {ADMIN}", f"{ADMIN}",
    f"Bearer {ADMIN[:-1]}", f"Bearer {ADMIN}x", f"Bearer x{ADMIN}", f"Bearer {ADMIN.upper()}",
    f"Bearer {ADMIN[:-1]}F", f"Bearer {ADMIN},{ADMIN}", "Bearer \udcff\udcfe\udc80",
    "Bearer " + "t" * 8000, f"Bearer {ADMIN[:16]}",
]
# (method, route) a role may NOT use: consumer cannot write or administer, producer cannot consume
NOT_FOR_CONSUMER = [
    ("PUT", "/v1/queues/{queue}"), ("DELETE", "/v1/queues/{queue}"),
    ("POST", "/v1/queues/{queue}/messages"), ("POST", "/v1/queues/{queue}/purge"),
    ("POST", "/v1/queues/{queue}/redrive"), ("PUT", "/v1/queues/{queue}/push"),
    ("DELETE", "/v1/queues/{queue}/push"), ("POST", "/v1/queues/{queue}/bindings"),
    ("DELETE", "/v1/queues/{queue}/bindings/{binding}"), ("PUT", "/v1/topics/{topic}"),
    ("DELETE", "/v1/topics/{topic}"), ("POST", "/v1/topics/{topic}/messages"),
    ("POST", "/v1/producers"), ("POST", "/v1/queues/{queue}/request"),
]
NOT_FOR_PRODUCER = [
    ("PUT", "/v1/queues/{queue}"), ("DELETE", "/v1/queues/{queue}"),
    ("POST", "/v1/queues/{queue}/receive"), ("POST", "/v1/queues/{queue}/ack"),
    ("POST", "/v1/queues/{queue}/nack"), ("POST", "/v1/queues/{queue}/visibility"),
    ("GET", "/v1/queues/{queue}/stream"), ("POST", "/v1/queues/{queue}/purge"),
    ("GET", "/v1/topics/{topic}/partitions/{p}/messages"),
    ("POST", "/v1/topics/{topic}/groups/{group}/offsets"), ("GET", "/v1/subscribe"),
]
HOSTILE_BODIES = [b"", b"{}", b"\xff\xfe", b"[" * 1000, b'{"messages": [{"body": "x"}]}']


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = Path(tmp_path_factory.mktemp("fuzz-auth"))
    (root / "tokens.toml").write_text(TOKENS)
    with running_cluster(root, size=1, extra_config='auth_file = "tokens.toml"',
                         token=ADMIN) as c:
        yield c


@pytest.fixture(scope="module")
def routes(secured: Cluster) -> list[Route]:
    doc = http("GET", f"{secured.nodes[0].url}/v1/openapi.json").body
    return [Route(method.upper(), path, None, ()) for path, ops in doc["paths"].items()
            for method in ops]


def fill(path: str, **values: str) -> str:
    for name in path_params(path):
        path = path.replace("{" + name + "}", values.get(name, PATH_VALUES.get(name, "fz-x")))
    return path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def assert_refused(answer_status: int, answer: object, code: str, what: str) -> None:
    status = {"unauthorized": 401, "forbidden": 403}[code]
    assert answer_status == status, f"{what}: {answer_status}, expected {status}"


def test_every_route_refuses_strangers(secured: Cluster, routes: list[Route]) -> None:
    port = secured.nodes[0].http_port
    for route in routes:
        path = fill(route.path)
        for i, header in enumerate(STRANGERS):
            headers = {"Content-Type": "application/json"}
            if header is not None:
                headers["Authorization"] = header
            answer = send(port, route.method, path, HOSTILE_BODIES[i % len(HOSTILE_BODIES)],
                          headers)
            if route.path in OPEN:
                continue
            what = f"{route.method} {path} with Authorization {str(header)[:40]!r}"
            assert answer.status == 401, f"{what}: {answer.status} {answer.body[:200]!r}"
            assert decode_error(answer, what)["code"] == "unauthorized"
            assert ADMIN.encode() not in answer.body, f"{what}: the answer echoes a token"


@pytest.mark.parametrize(("token", "denied"), [(CONSUMER, NOT_FOR_CONSUMER),
                                               (PRODUCER, NOT_FOR_PRODUCER)])
def test_roles_cannot_step_outside(secured: Cluster, routes: list[Route], token: str,
                                   denied: list[tuple[str, str]]) -> None:
    port = secured.nodes[0].http_port
    served = {(r.method, r.path) for r in routes}
    assert set(denied) <= served, "a route of the role table is no longer served"
    for method, route in denied:
        for body in HOSTILE_BODIES:
            answer = send(port, method, fill(route), body, bearer(token))
            what = f"{method} {route} as {token[:14]}"
            assert answer.status == 403, f"{what}: {answer.status} {answer.body[:200]!r}"
            assert decode_error(answer, what)["code"] == "forbidden"


def test_name_globs_hold_for_every_name(secured: Cluster, routes: list[Route]) -> None:
    """A token limited to orders* / orders.* gets 403 on any other queue or topic name,
    including look-alikes; an invalid name is 400 or 403, never served."""
    port = secured.nodes[0].http_port
    assert http("PUT", f"{secured.nodes[0].url}/v1/queues/orders-1", {},
                headers=secured.headers).status == 201
    others = ["billing", "ORDERS", "Orders-1", "order", "x-orders", "-orders", "_orders"]
    for route in routes:
        kind = "queue" if "{queue}" in route.path else "topic" if "{topic}" in route.path else ""
        if not kind:
            continue
        for name in others + hostile_segments()[::5]:
            answer = send(port, route.method, fill(route.path, **{kind: name}), b"{}",
                          bearer(ORDERS))
            what = f"{route.method} {route.path} {kind}={name[:30]!r} as orders*"
            assert answer.status in (400, 403, 404), f"{what}: {answer.status}"
            if name in others:
                assert answer.status == 403, f"{what}: {answer.status} {answer.body[:200]!r}"
    ok = send(port, "POST", "/v1/queues/orders-1/messages",
              json.dumps({"messages": [{"body": "x"}]}).encode(), bearer(ORDERS))
    assert ok.status == 201, ok


def test_non_utf8_authorization_is_401_not_500(secured: Cluster) -> None:
    answer = send(secured.nodes[0].http_port, "GET", "/v1/queues", b"",
                  {"Authorization": "Bearer \udcff\udcfe\udc80"})  # raw 0xff 0xfe 0x80 bytes
    assert answer.status == 401
