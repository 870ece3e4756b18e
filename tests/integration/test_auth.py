"""Authentication and roles on a real cluster: 401 without a valid token, 403 past a role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, Response, http, running_cluster

ADMIN = "admin-token-0123456789abcdef"
PRODUCER = "producer-token-0123456789abcdef"
CONSUMER = "consumer-token-0123456789abcdef"
ORDERS_ONLY = "orders-only-token-0123456789abcdef"
BOTH = "both-roles-token-0123456789abcdef"
NARROW = "narrow-token-0123456789abcdef"

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
token = "{ORDERS_ONLY}"
role = ["producer", "consumer"]
queues = "orders*"
[[tokens]]
token = "{BOTH}"
role = ["producer", "consumer"]
[[tokens]]
token = "{NARROW}"
role = "consumer"
queues = ["orders-eu", "inv*"]
topics = "orders.*"
"""


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = Path(tmp_path_factory.mktemp("auth"))
    (root / "tokens.toml").write_text(TOKENS)
    with running_cluster(root, extra_config='auth_file = "tokens.toml"', token=ADMIN) as c:
        yield c


def call(c: Cluster, method: str, path: str, token: str | None, body: Any = None) -> Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http(method, f"{c.nodes[0].url}{path}", body, headers=headers)


def test_missing_or_wrong_token_is_401_and_health_stays_open(secured: Cluster) -> None:
    for token in (None, "wrong-token-0123456789abcdef"):
        r = call(secured, "GET", "/v1/queues", token)
        assert r.status == 401 and r.body["error"]["code"] == "unauthorized"
    assert call(secured, "GET", "/healthz", None).status == 200
    assert call(secured, "GET", "/readyz", None).status == 200
    assert call(secured, "GET", "/metrics", None).status == 200


def test_roles(secured: Cluster) -> None:
    assert call(secured, "PUT", "/v1/queues/orders", ADMIN).status == 201
    assert call(secured, "PUT", "/v1/queues/other", ADMIN).status == 201
    r = call(secured, "PUT", "/v1/queues/sneaky", PRODUCER)
    assert r.status == 403 and r.body["error"]["code"] == "forbidden"
    msg = {"messages": [{"body": "x"}]}
    assert call(secured, "POST", "/v1/queues/orders/messages", PRODUCER, msg).status == 201
    assert call(secured, "POST", "/v1/queues/orders/messages", CONSUMER, msg).status == 403
    assert call(secured, "POST", "/v1/queues/orders/receive", PRODUCER, {}).status == 403
    got = call(secured, "POST", "/v1/queues/orders/receive", CONSUMER, {})
    assert got.status == 200 and len(got.body["messages"]) == 1
    assert call(secured, "POST", "/v1/queues/orders/purge", CONSUMER).status == 403
    assert call(secured, "GET", "/v1/queues/orders", CONSUMER).status == 200


def test_name_globs_limit_what_a_token_touches(secured: Cluster) -> None:
    call(secured, "PUT", "/v1/queues/orders-eu", ADMIN)
    call(secured, "PUT", "/v1/queues/billing", ADMIN)
    msg = {"messages": [{"body": "x"}]}
    assert call(secured, "POST", "/v1/queues/orders-eu/messages", ORDERS_ONLY, msg).status == 201
    r = call(secured, "POST", "/v1/queues/billing/messages", ORDERS_ONLY, msg)
    assert r.status == 403 and "billing" in r.body["error"]["message"]


def test_transactions_need_rights_on_every_part(secured: Cluster) -> None:
    call(secured, "PUT", "/v1/queues/txn-in", ADMIN)
    call(secured, "PUT", "/v1/queues/txn-out", ADMIN)
    call(secured, "POST", "/v1/queues/txn-in/messages", ADMIN, {"messages": [{"body": "a"}]})
    got = call(secured, "POST", "/v1/queues/txn-in/receive", CONSUMER, {}).body["messages"]
    txn = {"ack": [{"queue": "txn-in", "receipts": [got[0]["receipt"]]}],
           "publish": [{"queue": "txn-out", "messages": [{"body": "A"}]}]}
    assert call(secured, "POST", "/v1/transactions", CONSUMER, txn).status == 403
    assert call(secured, "POST", "/v1/transactions", PRODUCER, txn).status == 403
    r = call(secured, "POST", "/v1/transactions", BOTH, txn)
    assert r.status == 200, r.body


def test_console_page_opens_and_its_api_calls_need_a_token(secured: Cluster) -> None:
    assert call(secured, "GET", "/ui", None).status == 200
    assert call(secured, "GET", "/ui/console.js", None).status == 200
    assert call(secured, "GET", "/v1/cluster", None).status == 401
    assert call(secured, "GET", "/v1/cluster", CONSUMER).status == 200


def names(c: Cluster, kind: str, token: str) -> set[str]:
    r = call(c, "GET", f"/v1/{kind}", token)
    assert r.status == 200, r.body
    return {entry["name"] for entry in r.body[kind]}


def test_lists_show_only_the_names_a_token_may_see(secured: Cluster) -> None:
    for queue in ("orders-eu", "orders-us", "invoices", "hr-salaries"):
        call(secured, "PUT", f"/v1/queues/{queue}", ADMIN)
    for topic in ("orders.created", "hr.reviews"):
        call(secured, "PUT", f"/v1/topics/{topic}", ADMIN)
    every_queue, every_topic = names(secured, "queues", ADMIN), names(secured, "topics", ADMIN)
    assert {"orders-eu", "orders-us", "invoices", "hr-salaries"} <= every_queue
    assert {"orders.created", "hr.reviews"} <= every_topic
    assert names(secured, "queues", NARROW) == {"orders-eu", "invoices"}
    assert names(secured, "topics", NARROW) == {"orders.created"}
    assert names(secured, "queues", ORDERS_ONLY) == {q for q in every_queue
                                                     if q.startswith("orders")}
    assert names(secured, "topics", ORDERS_ONLY) == every_topic, "no topic globs: every topic"
    assert names(secured, "queues", CONSUMER) == every_queue
