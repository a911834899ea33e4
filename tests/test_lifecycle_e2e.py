"""Ready before it serves, drained before it exits, through real gateway processes: requests
sent the moment the port opens are served, not refused; ``/healthz`` and ``/readyz`` say what
a probe needs; on SIGTERM a request in flight finishes, no new connection is accepted, and
the process exits 0."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import requests

from conftest import GatewayFactory, Planted, proxied_session, start_embedded_gateway
from unit_gateway.testing import harness

_AS_ORG = {"Authorization": "Bearer unitgw:org"}


def _raw_get(port: int, target: str, host: str) -> bytes:
    """One HTTP/1 request through the proxy on ``port``; the whole answer (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
            "Authorization: Bearer unitgw:org\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def _probe(metrics_url: str, path: str) -> tuple[int, dict]:
    url = metrics_url.replace("/metrics", path)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_requests_sent_as_the_port_opens_are_served(run_dir: Path, planted: Planted) -> None:
    """The embedded sandbox starts inside the gateway's running hook, after mitmproxy has
    begun listening: the widest start-up window there is."""
    embedded = start_embedded_gateway(run_dir, planted)
    process, proxy_port, upstream = embedded.process, embedded.proxy_port, embedded.upstream
    try:
        embedded.connect_when_open()
        target = f"{upstream}/customers?page[limit]=1"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _raw_get(proxy_port, target, upstream), range(8)))
        statuses = [answer.split(b" ", 2)[1] for answer in answers]
        assert statuses == [b"200"] * 8, answers
    finally:
        assert process.stop() == 0


def test_probes_say_alive_and_ready(
    sandbox: harness.Sandbox, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(sandbox)
    assert gateway.metrics_url is not None
    assert _probe(gateway.metrics_url, "/healthz") == (200, {"alive": True})
    status, report = _probe(gateway.metrics_url, "/readyz")
    assert status == 200
    assert report == {
        "ready": True,
        "started": True,
        "draining": False,
        "unit": {},
        "store": "none",
    }
    with proxied_session(gateway) as session:
        assert session.get(f"{sandbox.url}/customers", headers=_AS_ORG).status_code == 200
    assert _probe(gateway.metrics_url, "/readyz")[1]["unit"] == {"sandbox": "reachable"}


def test_sigterm_finishes_what_is_in_flight_and_takes_nothing_new(
    sandbox: harness.Sandbox, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(sandbox, overrides={"lifecycle": {"drain_seconds": 20}})
    assert gateway.metrics_url is not None
    port = int(gateway.proxy_url.rpartition(":")[2])
    sandbox.faults(latency_ms=2000)  # the request in flight takes 2 s at Unit

    def slow_request() -> requests.Response:
        with proxied_session(gateway) as session:
            return session.get(f"{sandbox.url}/customers", headers=_AS_ORG, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(slow_request)
        time.sleep(0.5)  # it has reached the gateway
        assert gateway.process.proc is not None
        gateway.process.proc.send_signal(signal.SIGTERM)
        gateway.process.wait_for(r"unit-gateway: draining: no new connections, 1 request")
        status, report = _probe(gateway.metrics_url, "/readyz")
        assert (status, report["ready"], report["draining"]) == (503, False, True)
        refused = False
        for _ in range(50):  # the listening socket closes within moments
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                refused = True
                break
            time.sleep(0.05)
        assert refused, "the gateway still accepts connections while draining"
        answer = in_flight.result(timeout=30)
    assert answer.status_code == 200
    gateway.process.wait_for(r"unit-gateway: drained; exiting")
    assert gateway.process.proc is not None
    assert gateway.process.proc.wait(timeout=20) == 0
