"""Proxy modes end to end: regular mode (HTTPS_PROXY and the gateway's CA) and reverse mode
(the SDK's base URL is the gateway itself over plain HTTP, no CA), each in front of a TLS
upstream as in front of https://api.s.unit.sh; both in one gateway. Transparent mode has its
own file (it needs a network namespace)."""

from __future__ import annotations

import re

import pytest
import requests
from unit import Unit
from unit.models import UnitError

from conftest import GatewayFactory, Planted, clear_proxy_settings, sdk, take_down
from unit_gateway.testing import harness


def test_regular_mode_with_the_python_sdk(
    gateway_factory: GatewayFactory,
    tls_sandbox: harness.Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = gateway_factory(tls_sandbox, name="regular")
    # What a service sets: the proxy and the gateway's CA; the SDK keeps Unit's URL.
    unit = sdk(gateway, tls_sandbox, "unitgw:customer:10001", monkeypatch)
    cards = unit.cards.list()
    assert cards.data and all(c.relationships["customer"].id == "10001" for c in cards.data)
    stats = tls_sandbox.stats()
    assert stats["tokens_created"]["customer"] == 1
    assert stats["requests"]["GET /cards"] == 1


def test_reverse_mode_with_the_python_sdk(
    gateway_factory: GatewayFactory,
    tls_sandbox: harness.Sandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reverse mode in front of a TLS upstream, as in front of https://api.s.unit.sh.
    gateway = gateway_factory(tls_sandbox, mode=f"reverse:{tls_sandbox.url}", name="reverse")
    clear_proxy_settings(monkeypatch)
    unit = Unit(gateway.proxy_url, "unitgw:customer:10001")
    cards = unit.cards.list()
    assert cards.data and all(c.relationships["customer"].id == "10001" for c in cards.data)
    stats = tls_sandbox.stats()
    assert stats["tokens_created"]["customer"] == 1
    assert stats["requests"]["GET /cards"] == 1

    # A request without a placeholder is still refused by the gateway, not forwarded.
    bare = requests.get(gateway.proxy_url + "/cards", proxies={"http": "", "https": ""})
    assert bare.status_code == 401
    assert bare.json()["errors"][0]["code"] == "missing_authorization"


def test_regular_and_reverse_listeners_in_one_gateway(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    regular_port, reverse_port = harness.free_port(), harness.free_port()
    gateway = gateway_factory(
        sandbox,
        mode=f"regular@{regular_port}",
        extra_args=("--mode", f"reverse:{sandbox.url}@{reverse_port}"),
        name="two-modes",
    )
    output = gateway.process.wait_for(
        rf"proxy listening on 127\.0\.0\.1:{reverse_port} \(reverse:{re.escape(sandbox.url)}\)"
    ).string
    assert f"proxy listening on 127.0.0.1:{regular_port} (regular)" in output
    placeholder = {"Authorization": "Bearer unitgw:customer:10001"}
    direct = {"http": "", "https": ""}
    reverse = requests.get(
        f"http://127.0.0.1:{reverse_port}/cards", headers=placeholder, proxies=direct
    )
    proxy = f"http://127.0.0.1:{regular_port}"
    regular = requests.get(
        sandbox.url + "/cards", headers=placeholder, proxies={"http": proxy, "https": proxy}
    )
    assert reverse.status_code == regular.status_code == 200
    assert reverse.json() == regular.json()
    # One token serves both listeners: they share the gateway's cache.
    assert sandbox.stats()["tokens_created"]["customer"] == 1


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_unit_down_is_an_error_the_sdk_can_read_in_each_mode(
    mode: str,
    gateway_factory: GatewayFactory,
    tls_sandbox: harness.Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    planted: Planted,
) -> None:
    """mitmproxy's default (eager) connection strategy connects to Unit before it reads the
    request: with Unit down, the SDK's CONNECT failed (regular mode) or its connection was
    dropped (reverse mode), and it had no answer to read. The gateway connects for the
    request, which gets a JSON:API error that says why."""
    clear_proxy_settings(monkeypatch)
    if mode == "regular":
        gateway = gateway_factory(tls_sandbox, name="regular")
        unit = sdk(gateway, tls_sandbox, "unitgw:customer:10001", monkeypatch)
    else:
        gateway = gateway_factory(tls_sandbox, mode=f"reverse:{tls_sandbox.url}", name="reverse")
        unit = Unit(gateway.proxy_url, "unitgw:customer:10001")
    assert unit.cards.list().data  # the token is minted and cached
    take_down(tls_sandbox, planted)  # Unit goes away
    down = unit.cards.list()  # the SDK opens a new connection for each call
    assert isinstance(down, UnitError), down
    error = down.errors[0]
    assert (error.status, error.code) == ("502", "upstream_unreachable"), error.detail
    assert error.detail.startswith(tls_sandbox.url.removeprefix("https://") + " (Unit): ")
