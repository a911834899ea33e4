"""The gateway as a real process: start, announce, forward, serve metrics, stop cleanly."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from conftest import GatewayFactory, Planted, ports_of, proxied_session, sdk
from unit_gateway.testing import harness


def test_announces_where_it_listens(gateway: harness.Gateway) -> None:
    output = gateway.process.output()
    assert re.search(r"unit-gateway: proxy listening on 127\.0\.0\.1:\d+ \(regular\)", output)
    assert "unit-gateway: upstream http://127.0.0.1:" in output
    assert f"unit-gateway: CA certificate {gateway.ca_path}" in output
    assert gateway.ca_path.exists()
    assert gateway.metrics_url is not None
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", gateway.metrics_url)


def test_forwards_to_the_sandbox_and_serves_metrics(
    gateway: harness.Gateway, sandbox: harness.Sandbox, client: requests.Session
) -> None:
    response = client.get(
        f"{sandbox.url}/cards", headers={"Authorization": f"Bearer {sandbox.org_token}"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"], "the sandbox has seeded cards"
    assert sandbox.stats()["requests"].get("GET /cards") == 1
    assert 'unit_gateway_build_info{version="' in gateway.metrics_text()


def test_forwards_over_tls_to_a_tls_upstream(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(tls_sandbox, name="tls-gateway")
    with proxied_session(gateway) as session:
        response = session.get(
            f"{tls_sandbox.url}/accounts",
            headers={"Authorization": f"Bearer {tls_sandbox.org_token}"},
        )
    assert response.status_code == 200, response.text
    assert tls_sandbox.stats()["requests"].get("GET /accounts") == 1


def test_unit_python_sdk_through_the_gateway(
    gateway: harness.Gateway,
    sandbox: harness.Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    # The SDK uses module-level requests: proxy and CA come from the environment, as in a service.
    unit = sdk(gateway, sandbox, sandbox.org_token, monkeypatch)
    cards = unit.cards.list()
    assert cards.data, cards
    card = unit.cards.get(cards.data[0].id)
    assert card.data.id == cards.data[0].id
    assert sandbox.stats()["requests"].get("GET /cards/{cardId}") == 1


def test_stops_cleanly_and_frees_its_ports(
    run_dir: Path, sandbox: harness.Sandbox, planted: Planted
) -> None:
    config = harness.write_gateway_config(run_dir / "gw.yaml", upstream_url=sandbox.url)
    gateway = harness.start_gateway(run_dir, config, org_token=sandbox.org_token)
    pid = gateway.process.proc.pid if gateway.process.proc else 0
    assert gateway.metrics_url is not None
    ports = ports_of(gateway)
    assert not any(harness.port_is_free(p) for p in ports)
    assert gateway.process.stop() == 0
    assert all(harness.port_is_free(p) for p in ports)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_mitmweb_with_web_flag(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, planted: Planted
) -> None:
    web_port = harness.free_port()
    gateway = gateway_factory(
        sandbox,
        name="web-gateway",
        extra_args=(
            "--set",
            f"web_port={web_port}",
            "--set",
            "web_open_browser=false",
            "--set",
            "web_host=127.0.0.1",
        ),
        web=True,
    )
    url = gateway.process.wait_for(r"Web server listening at (\S+)").group(1)
    assert f":{web_port}" in url
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        page = response.read()
    assert response.status == 200
    planted.blobs.append(("mitmweb index page", page))
    with proxied_session(gateway) as session:
        assert (
            session.get(
                f"{sandbox.url}/customers",
                headers={"Authorization": f"Bearer {sandbox.org_token}"},
            ).status_code
            == 200
        )
    # What mitmweb shows of that flow (the caller's own org token passed through) is scanned.
    token = re.search(r"token=(\w+)", url)
    assert token is not None, url
    listing = urllib.request.Request(
        f"http://127.0.0.1:{web_port}/flows", headers={"Authorization": f"Bearer {token[1]}"}
    )
    with opener.open(listing, timeout=10) as response:
        flows = response.read()
    assert b"/customers" in flows
    planted.blobs.append(("mitmweb GET /flows", flows))


#: An operator's own mitmproxy script: it tags each response with its version and with the
#: Authorization it saw (the flow holds the placeholder, never the token the gateway sent).
TEAM_SCRIPT = """
def response(flow):
    flow.response.headers["x-team-script"] = "{version}"
    flow.response.headers["x-team-script-saw"] = flow.request.headers.get("authorization", "")
"""


def test_an_operators_own_script_runs_next_to_the_gateway_and_reloads(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    """mitmproxy's hooks come from the gateway's hook table (unit_gateway.mitm.hook_table): a script
    loaded with the gateway gets its hooks, and mitmproxy's reload of it on a change is seen."""
    script = run_dir / "team_script.py"
    script.write_text(TEAM_SCRIPT.format(version="first"))
    gateway = gateway_factory(sandbox, name="script-gateway", extra_args=("-s", str(script)))
    headers = {"Authorization": "Bearer unitgw:org"}
    with proxied_session(gateway) as session:
        first = session.get(f"{sandbox.url}/cards", headers=headers)
        assert first.status_code == 200, first.text
        assert first.headers["x-team-script"] == "first"
        assert first.headers["x-team-script-saw"] == "Bearer unitgw:org"
        script.write_text(TEAM_SCRIPT.format(version="second"))
        later = time.time() + 5
        os.utime(script, (later, later))  # newer than mitmproxy's last look, whatever the clock
        deadline = time.monotonic() + 15
        while True:
            response = session.get(f"{sandbox.url}/cards", headers=headers)
            assert response.status_code == 200, response.text
            if response.headers["x-team-script"] == "second" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    for answer in (first, response):
        planted.blobs.append(("an answer the team script tagged", repr(answer.headers).encode()))
    assert response.headers["x-team-script"] == "second", gateway.process.output()
    assert response.headers["x-team-script-saw"] == "Bearer unitgw:org"
    assert sandbox.stats()["unauthenticated"] == {}
