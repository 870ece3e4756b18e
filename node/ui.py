"""The web console every node serves at /ui: static HTML, JS and CSS, no build step.

The page calls this node's own HTTP API (same origin) and renders the cluster, queues, topics
and dead-letter queues; it holds no state of its own. The files live in node/static/ and are
read once when the app is built, so a request never touches the disk.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from storage.errors import BrokerError

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
# Every file the console serves, with its content type; nothing else under /ui is reachable.
ASSETS = {INDEX: "text/html", "console.js": "text/javascript", "console.css": "text/css"}
ASSET_BYTES_MAX = 512 * 1024
# Same origin only, no inline script, no framing: the page can talk to this node and no one else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

UI_ASSETS = web.AppKey("raftmq_ui_assets", dict)


def load_assets(directory: Path = STATIC_DIR) -> dict[str, bytes]:
    """Read every console file; fail at start-up (not at the first visit) if one is missing."""
    assets = {}
    for name in ASSETS:
        data = (directory / name).read_bytes()
        assert len(data) <= ASSET_BYTES_MAX, f"{name}: {len(data)} bytes > {ASSET_BYTES_MAX}"
        assets[name] = data
    assert set(assets) == set(ASSETS)
    return assets


def asset_response(request: web.Request, name: str) -> web.Response:
    assets: dict[str, bytes] = request.app[UI_ASSETS]
    if name not in assets:
        known = ", ".join(sorted(n for n in ASSETS if n != INDEX))
        raise BrokerError("not_found", f"no console file {name!r}; the console serves {known}")
    return web.Response(body=assets[name], content_type=ASSETS[name], charset="utf-8",
                        headers=SECURITY_HEADERS)


async def index(request: web.Request) -> web.Response:
    return asset_response(request, INDEX)


async def asset(request: web.Request) -> web.Response:
    return asset_response(request, request.match_info["asset"])


def setup(app: web.Application) -> None:
    app[UI_ASSETS] = load_assets()
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/{asset}", asset)
