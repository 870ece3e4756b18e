"""The /ui console in headless Chromium against a real 3-node cluster.

Chromium is driven over the DevTools protocol (a websocket, via aiohttp): no selenium, no
chromedriver. Skipped, with the reason, when no Chromium binary is installed (Debian package
`chromium`). Set RAFTMQ_UPDATE_SCREENSHOTS=1 to refresh the screenshots in docs/img/ from this run.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.support.cluster import REPO, Cluster, Node, http, wait_until

T = TypeVar("T")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER_START_TIMEOUT_S = 30.0
CDP_CALL_TIMEOUT_S = 30.0
PAGE_TIMEOUT_S = 30.0
DOCS_IMG = REPO / "docs" / "img"
WINDOW = {"width": 1400, "height": 1000}
TERM = "document.getElementById('term').textContent.replaceAll(',', '')"


def browser_binary() -> str | None:
    explicit = os.environ.get("RAFTMQ_CHROMIUM")
    if explicit:
        return explicit
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Page:
    """One page target over the DevTools protocol: call, evaluate, click, screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        async with asyncio.timeout(CDP_CALL_TIMEOUT_S):
            while True:
                reply = json.loads(await self.ws.receive_str())
                if reply.get("id") != msg_id:
                    continue  # an event
                assert "error" not in reply, f"{method}: {reply['error']}"
                result: dict[str, Any] = reply["result"]
                return result

    async def js(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                awaitPromise=True)
        assert "exceptionDetails" not in reply, f"{expression}: {reply['exceptionDetails']}"
        return reply["result"].get("value")

    async def poll(self, expression: str, what: str,
                   timeout_s: float = PAGE_TIMEOUT_S) -> Any:
        return await poll_async(lambda: self.js(expression), what, timeout_s)

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (not element.click())."""
        box = await self.js(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return null;
            el.scrollIntoView({{block: "center"}});
            const r = el.getBoundingClientRect();
            return {{x: r.x + r.width / 2, y: r.y + r.height / 2}};
        }})()""")
        assert box is not None, f"no element {selector}"
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                            button="left", clickCount=1)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


async def poll_async(fn: Callable[[], Awaitable[T]], what: str, timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    value: T | None = None
    while time.monotonic() < deadline:
        value = await fn()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {value!r}")


def start_browser(binary: str, profile: Path, log: Path) -> subprocess.Popen[bytes]:
    args = [binary, "--headless", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-sandbox",
            "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-default-apps", "--mute-audio",
            f"--window-size={WINDOW['width']},{WINDOW['height']}", "about:blank"]
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_browser(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to the browser's own process group (it leads its session), so
    its helpers (zygote, renderer) go too."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def devtools_port(profile: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    def ready() -> int | None:
        assert proc.poll() is None, f"chromium exited: {log.read_text(errors='replace')[-2000:]}"
        text = (profile / "DevToolsActivePort").read_text() if (
            profile / "DevToolsActivePort").exists() else ""
        return int(text.split()[0]) if text.strip() else None

    return wait_until(ready, BROWSER_START_TIMEOUT_S, what="chromium's DevTools port")


@asynccontextmanager
async def browser_page(tmp_path: Path) -> AsyncIterator[Page]:
    binary = browser_binary()
    assert binary is not None
    profile, log = tmp_path / "chromium-profile", tmp_path / "chromium.log"
    proc = start_browser(binary, profile, log)
    try:
        port = devtools_port(profile, proc, log)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = Page(ws)
                await cdp.call("Emulation.setDeviceMetricsOverride", deviceScaleFactor=1,
                               mobile=False, **WINDOW)
                yield cdp
    finally:
        stop_browser(proc)


def dead_letter_three(url: str) -> None:
    """orders (max_receives 1) -> orders-dlq: publish 3, receive without ack, leases expire."""
    r = http("PUT", f"{url}/v1/queues/orders", {"max_receives": 1, "visibility_timeout_s": 1,
                                                 "dead_letter_queue": "orders-dlq"})
    assert r.status == 201, r.body
    r = http("POST", f"{url}/v1/queues/orders/messages",
             {"messages": [{"body": f"order {i}"} for i in range(3)]})
    assert r.status == 201, r.body
    r = http("POST", f"{url}/v1/queues/orders/receive", {"max_messages": 3})
    assert len(r.body["messages"]) == 3, r.body
    wait_until(lambda: stats(url, "orders-dlq")["ready"] == 3, 30, what="3 dead-lettered")


def topic_with_five(url: str) -> None:
    """events: 3 partitions, 5 keyed messages; group billing commits partition 0 up to 1."""
    r = http("PUT", f"{url}/v1/topics/events", {"partitions": 3})
    assert r.status == 201, r.body
    r = http("POST", f"{url}/v1/topics/events/messages",
             {"messages": [{"body": f"event {i}", "key": f"k{i}"} for i in range(5)]})
    assert r.status == 201, r.body
    r = http("POST", f"{url}/v1/topics/events/groups/billing/offsets",
             {"offsets": [{"partition": 0, "offset": 1}]})
    assert r.status == 200, r.body


def stats(url: str, queue: str) -> dict[str, Any]:
    r = http("GET", f"{url}/v1/queues/{queue}?consistency=linearizable")
    assert r.status == 200, r.body
    result: dict[str, Any] = r.body["stats"]
    return result


def cell(queue: str, column: int, table: str = "queue-rows") -> str:
    return (f"document.querySelector('#{table} tr[data-key=\"{queue}\"]')"
            f"?.cells[{column}].textContent")


@pytest.mark.skipif(browser_binary() is None,
                    reason="no Chromium: apt-get install chromium (or set RAFTMQ_CHROMIUM)")
def test_console_shows_the_cluster_and_queues_and_redrives_a_dlq(
        cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.followers()[0]  # any node serves the console; a follower forwards writes
    dead_letter_three(node.url)
    topic_with_five(node.url)
    asyncio.run(drive_console(node.url, tmp_path))
    # the click moved the messages, through Raft, for every node to see
    assert stats(node.url, "orders")["ready"] == 3
    assert stats(cluster.leader().url, "orders-dlq")["ready"] == 0


async def open_console(page: Page, url: str) -> None:
    await page.call("Page.navigate", url=f"{url}/ui")
    await page.poll("Number(document.body?.dataset.refreshes) >= 1", "the first refresh")


async def drive_console(url: str, tmp_path: Path) -> None:
    async with browser_page(tmp_path) as page:
        await open_console(page, url)
        # the cluster: three reachable members (the mesh may still be connecting at first),
        # exactly one leader, no error banner
        await page.poll("Array.from(document.querySelectorAll('#members tr'), tr => "
                        "tr.cells[1].textContent + '/' + tr.cells[2].textContent).sort().join()"
                        " === 'follower/yes,follower/yes,leader/yes'", "3 reachable members")
        assert await page.js("document.getElementById('error').hidden") is True
        # the queues created through the API, with their counts
        assert await page.poll(cell("orders", 9), "orders row") == "3"  # dead-lettered
        assert await page.js(cell("orders-dlq", 1)) == "3"  # ready
        assert await page.js(cell("orders-dlq", 1, "dlq-rows")) == "orders"  # its source
        # topics: partitions, message count, the group
        assert await page.poll(cell("events", 1, "topic-rows"), "events row") == "3"
        assert await page.js(cell("events", 2, "topic-rows")) == "5"
        assert await page.js(cell("events", 6, "topic-rows")) == "billing"
        # redrive: the target defaults to the queue the messages came from
        button = '#dlq-rows tr[data-key="orders-dlq"] button[name=redrive]'
        assert await page.js(f"document.querySelector('{button}').closest('tr')"
                             ".querySelector('input[name=to]').value") == "orders"
        # mistakes are explained and move nothing: a bad max (checked by the page), a missing
        # target queue (the API's error, shown as it came)
        assert await redrive_message(page, button, "orders", "5000") == (
            "Redrive: max must be a whole number from 1 to 1000.")
        message = await redrive_message(page, button, "no-such-queue", "100")
        assert message.startswith("Redrive: queue_not_found:"), message
        assert stats(url, "orders-dlq")["ready"] == 3
        message = await redrive_message(page, button, "orders", "100")
        assert message == "Moved 3 message(s) from orders-dlq to orders.", message
        await page.poll(f"{cell('orders', 1)} === '3' && {cell('orders-dlq', 1)} === '0'",
                        "the tables to show the moved messages")
        await save_screenshot(page, tmp_path, "console.png")


async def redrive_message(page: Page, button: str, to: str, max_messages: str) -> str:
    """Fill the DLQ row's form, click Redrive, and return the result line the page shows."""
    await page.js(f"""(() => {{
        const tr = document.querySelector('{button}').closest('tr');
        tr.querySelector('input[name=to]').value = {json.dumps(to)};
        tr.querySelector('input[name=max]').value = {json.dumps(max_messages)};
        document.getElementById('redrive-result').textContent = '';
    }})()""")
    await page.click(button)
    message: str = await page.poll("document.getElementById('redrive-result').textContent",
                                   "the redrive result")
    return message


async def save_screenshot(page: Page, tmp_path: Path, name: str) -> None:
    """A PNG of the page; copied to docs/img/ when RAFTMQ_UPDATE_SCREENSHOTS=1."""
    shot = tmp_path / name
    await page.screenshot(shot)
    assert shot.read_bytes().startswith(b"\x89PNG"), "not a PNG"
    if os.environ.get("RAFTMQ_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS_IMG / name)


@pytest.mark.skipif(browser_binary() is None,
                    reason="no Chromium: apt-get install chromium (or set RAFTMQ_CHROMIUM)")
def test_console_shows_a_dead_leader_unreachable_and_the_new_leader(
        cluster: Cluster, tmp_path: Path) -> None:
    old = cluster.leader()
    watcher = cluster.followers()[0]
    asyncio.run(watch_failover(cluster, old, watcher.url, tmp_path))


async def watch_failover(cluster: Cluster, old: Node, url: str, tmp_path: Path) -> None:
    async with browser_page(tmp_path) as page:
        await open_console(page, url)
        assert await page.poll("document.getElementById('leader').textContent",
                               "the leader") == old.id
        term = int(await page.js(TERM))
        cluster.kill(old)
        new = await page.poll(
            "(() => { const l = document.getElementById('leader').textContent;"
            f" return l !== {json.dumps(old.id)} && !l.startsWith('none') && l; }})()",
            "a new leader on the page")
        assert new in {n.id for n in cluster.nodes if n is not old}
        row = f"document.querySelector('#members tr[data-key=\"{old.id}\"]')"
        assert await page.poll(f"{row}.cells[2].textContent === 'no'",
                               "the dead leader shown unreachable") is True
        assert await page.js(f"{row}.cells[1].textContent") == "unknown"
        assert int(await page.js(TERM)) > term
        assert await page.js("document.getElementById('error').hidden") is True
        await save_screenshot(page, tmp_path, "console-node-down.png")
