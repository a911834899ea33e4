"""Proxy credentials (mitmproxy's ``proxyauth``), the README's way to limit who may use the
gateway: a client without them is refused before anything reaches Unit, and the password
shows up in no output, whether sent on a CONNECT (https) or with each request (plain http)."""

from __future__ import annotations

import secrets
from pathlib import Path

import requests

from conftest import GatewayFactory, Planted
from unit_gateway.testing import harness


def session_for(gateway: harness.Gateway, credentials: str | None) -> requests.Session:
    proxy = gateway.proxy_url
    if credentials is not None:
        proxy = proxy.replace("http://", f"http://{credentials}@")
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": proxy, "https": proxy}
    session.verify = str(gateway.ca_path)
    return session


def test_proxy_credentials_are_required_and_never_shown(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    tls_sandbox: harness.Sandbox,
    planted: Planted,
    run_dir: Path,
) -> None:
    password = planted.add("proxy password", "pw-" + secrets.token_hex(12))
    placeholder = {"Authorization": "Bearer unitgw:customer:10001"}
    for upstream in (tls_sandbox, sandbox):
        name = "https" if upstream is tls_sandbox else "http"
        gateway = gateway_factory(
            upstream,
            name=f"proxyauth-{name}",
            extra_args=(
                "--set", f"proxyauth=svc:{password}",
                "--set", "flow_detail=4",
                "--set", f"save_stream_file={run_dir / f'{name}.flows'}",
            ),
        )  # fmt: skip
        with session_for(gateway, f"svc:{password}") as allowed:
            response = allowed.get(upstream.url + "/cards", headers=placeholder)
            assert response.status_code == 200, response.text
        with session_for(gateway, None) as anonymous:
            if upstream is tls_sandbox:
                try:
                    refused = anonymous.get(upstream.url + "/cards", headers=placeholder)
                except requests.exceptions.ProxyError as e:
                    assert "407" in str(e)
                else:
                    raise AssertionError(f"CONNECT without credentials got {refused.status_code}")
            else:
                refused = anonymous.get(upstream.url + "/cards", headers=placeholder)
                assert refused.status_code == 407
                assert refused.headers["Proxy-Authenticate"].startswith("Basic")
                error = refused.json()["errors"][0]
                assert error["code"] == "proxy_authentication_required"
        with session_for(gateway, "svc:wrong") as wrong:
            try:
                assert wrong.get(upstream.url + "/cards", headers=placeholder).status_code == 407
            except requests.exceptions.ProxyError as e:
                assert "407" in str(e)
        stats = upstream.stats()
        assert stats["requests"]["GET /cards"] == 1, "only the authenticated request reached Unit"
        assert stats["tokens_created"]["customer"] == 1
    # The planted fixture scans every output (both gateways' stdout/stderr and saved flows)
    # for the password in raw, URL-encoded and base64 form (as in Proxy-Authorization).
