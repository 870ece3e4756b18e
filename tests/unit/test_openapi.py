"""The served OpenAPI document describes exactly the routes the node serves."""

from __future__ import annotations

from aiohttp import web

from node import openapi
from node.server import add_routes


def served_routes() -> set[tuple[str, str]]:
    app = web.Application()
    add_routes(app)
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        routes.add((route.method, path))
    return routes


def test_every_served_route_is_documented_and_nothing_else() -> None:
    documented = {(m, p) for m, p, *_ in openapi.ROUTES}
    served = served_routes()
    assert served - documented == set(), "served but missing from the OpenAPI document"
    assert documented - served == set(), "documented but not served"


def test_document_is_openapi_3_with_path_parameters() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.")
    op = doc["paths"]["/v1/queues/{queue}/messages"]["post"]
    assert [p["name"] for p in op["parameters"]] == ["queue"]
    assert "requestBody" in op and "201" in op["responses"]
