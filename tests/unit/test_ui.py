"""The /ui console is served from node/static, same-origin only, and calls only real routes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node import openapi, ui
from node.app import error_middleware

STATIC = Path(ui.__file__).parent / "static"


def console_app() -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    ui.setup(app)
    return app


async def fetch(path: str) -> tuple[int, str, dict[str, str], bytes]:
    async with TestClient(TestServer(console_app())) as client:
        resp = await client.get(path)
        body = await resp.read()
        return resp.status, resp.content_type, dict(resp.headers), body


def get(path: str) -> tuple[int, str, dict[str, str], bytes]:
    return asyncio.run(fetch(path))


def test_ui_serves_the_console_page_with_a_same_origin_policy() -> None:
    status, ctype, headers, body = get("/ui")
    assert status == 200 and ctype == "text/html"
    assert b"<title>raftmq console</title>" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_every_file_the_page_references_is_served_locally() -> None:
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/ui/console.js" in refs and "/ui/console.css" in refs
    for ref in refs:
        assert ref.startswith("/"), f"{ref}: the console must not load anything off-node"
        if ref.startswith("/ui/"):
            status, ctype, _, body = get(ref)
            assert status == 200 and body, ref
            assert ctype == ui.ASSETS[ref.removeprefix("/ui/")]


@pytest.mark.parametrize("name", ["nope.js", "ui.py", "..%2Fui.py", "index.htm"])
def test_unknown_console_file_is_a_404_in_the_api_error_shape(name: str) -> None:
    status, ctype, _, body = get(f"/ui/{name}")
    assert status == 404 and ctype == "application/json"
    assert b'"code":"not_found"' in body and b"console.js" in body


def test_missing_static_file_fails_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html></html>")
    with pytest.raises(FileNotFoundError):
        ui.load_assets(tmp_path)


def api_calls(js: str) -> list[tuple[str, str]]:
    """(method, path template) of every api("METHOD", "/path") call in the console's JS."""
    calls = re.findall(r'api\("([A-Z]+)",\s*[`"]([^`"]+)[`"]', js)
    return [(method, re.sub(r"\$\{[^}]*\}", "{}", path).split("?")[0])
            for method, path in calls]


def documented(method: str, template: str, routes: list[Any]) -> bool:
    for m, path, *_ in routes:
        if m == method and re.sub(r"\{[^}]+\}", "{}", path) == template:
            return True
    return False


def test_the_console_calls_only_documented_api_routes() -> None:
    calls = api_calls((STATIC / "console.js").read_text())
    assert ("POST", "/v1/queues/{}/redrive") in calls and ("GET", "/v1/cluster") in calls
    missing = [c for c in calls if not documented(*c, openapi.ROUTES)]
    assert missing == [], "the console calls routes the node does not document"
