"""mitmweb's REST API and ``/updates`` websocket, as the end-to-end tests read them."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import requests


def web_session(bearer: str) -> requests.Session:
    """mitmweb's REST API, with tornado's double-submit XSRF token for writes."""
    session = requests.Session()
    session.trust_env = False
    xsrf = secrets.token_hex(16)
    session.headers.update(
        {
            "Authorization": f"Bearer {bearer}",
            "X-XSRFToken": xsrf,
            "Cookie": f"_mitmproxy_xsrf={xsrf}",
        }
    )
    return session


@contextmanager
def updates_of(base: str, bearer: str) -> Iterator[list[bytes]]:
    """Every message mitmweb's ``/updates`` websocket sends while the block runs."""
    received: list[bytes] = []
    connected, stop = threading.Event(), threading.Event()

    async def record() -> None:
        headers = {"Authorization": f"Bearer {bearer}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.ws_connect(f"{base}/updates") as ws:
                connected.set()
                while not stop.is_set():
                    try:
                        message = await ws.receive(timeout=0.2)
                    except TimeoutError:
                        continue
                    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        data = message.data
                        received.append(data.encode() if isinstance(data, str) else data)
                    elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    recorder = threading.Thread(target=lambda: asyncio.run(record()), daemon=True)
    recorder.start()
    assert connected.wait(10), "websocket /updates did not connect"
    try:
        yield received
    finally:
        time.sleep(0.5)  # the last messages
        stop.set()
        recorder.join(10)
