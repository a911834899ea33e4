"""Metrics: header parsing and windows without a proxy; then a real gateway's /metrics."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import requests
from mitmproxy import http

from conftest import GatewayFactory, proxied_session
from unit_gateway.metrics.exporter import RecentRequests, reported_limits
from unit_gateway.net.limits import retry_after_seconds
from unit_gateway.testing import harness


def test_retry_after_as_seconds_or_date() -> None:
    assert retry_after_seconds("30") == 30
    later = datetime.now(UTC) + timedelta(seconds=120)
    assert abs(retry_after_seconds(format_datetime(later, usegmt=True)) - 120) < 2
    assert retry_after_seconds("soon") is None


def test_reported_limits_from_either_header_style() -> None:
    headers = http.Headers(x_ratelimit_limit="1000", x_ratelimit_remaining="998")
    assert reported_limits(headers) == (1000, 998)
    assert reported_limits(http.Headers(ratelimit="limit=100, remaining=40, reset=5")) == (100, 40)
    assert reported_limits(http.Headers()) == (None, None)


def test_sliding_window_forgets_after_a_minute() -> None:
    window = RecentRequests()
    for t in range(10):
        window.add(100.0 + t)
    assert window.count(109.5) == 10
    assert window.count(165.0) == 4  # 106..109: the window is (105, 165]
    assert window.count(200.0) == 0


def series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def get(session: requests.Session, sandbox: harness.Sandbox, path: str, token: str) -> int:
    return session.get(sandbox.url + path, headers={"Authorization": f"Bearer {token}"}).status_code


def test_gateway_metrics_count_routes_tokens_and_rate_limits(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(
        sandbox,
        overrides={
            "unit": {"rate_limit_per_minute": 100},
            "tokens": {"customer": {"two_factor": "sandbox-otp"}},
        },
    )
    sandbox.faults(rate_limit_headers=True)
    with proxied_session(gateway) as session:
        assert get(session, sandbox, "/cards", "unitgw:customer:10001") == 200
        assert get(session, sandbox, "/cards", "unitgw:customer:10001") == 200
        assert get(session, sandbox, "/cards/30001/secure-data/pan", "unitgw:customer:10001") == 200
        assert get(session, sandbox, "/no/such/route", "unitgw:org") == 404
        assert session.get(sandbox.url + "/cards").status_code == 401  # answered by the gateway
        sandbox.faults(rate_limit_per_minute=1)
        assert get(session, sandbox, "/accounts", "unitgw:org") == 429
        sandbox.faults(rate_limit_per_minute=0)
    text = gateway.metrics_text()
    assert value(text, 'unit_gateway_requests_total{method="GET",route="/cards",status="200"}') == 2
    assert value(text, 'unit_gateway_requests_total{method="GET",route="other",status="404"}') == 1
    assert value(text, 'unit_gateway_requests_total{method="GET",route="/cards",status="401"}') == 1
    assert value(text, 'unit_gateway_upstream_rate_limited_total{route="/accounts"}') == 1
    assert value(text, 'unit_gateway_token_cache_hits_total{kind="customer"}') == 1
    assert value(text, 'unit_gateway_token_cache_misses_total{kind="customer"}') == 2
    assert (
        value(text, 'unit_gateway_token_mints_total{kind="customer",outcome="ok",strategy="none"}')
        == 1
    )
    assert (
        value(
            text,
            'unit_gateway_token_mints_total{kind="customer",outcome="ok",strategy="sandbox-otp"}',
        )
        == 1
    )
    assert value(text, 'unit_gateway_verifications_started_total{kind="customer"}') == 1
    assert (
        value(text, 'unit_gateway_rate_limit_configured_per_minute{environment="sandbox"}') == 100
    )
    assert value(text, 'unit_gateway_upstream_ratelimit_limit{environment="sandbox"}') >= 1
    assert value(text, "unit_gateway_upstream_retry_after_seconds") > 0
    assert (
        value(text, 'unit_gateway_upstream_duration_seconds_count{method="GET",route="/cards"}')
        == 2
    ), "the gateway's own 401 never reached Unit"
    assert value(text, 'unit_gateway_overhead_seconds_count{method="GET",route="/cards"}') == 3


async def _distinct_ids(gateway: harness.Gateway, sandbox: harness.Sandbox, count: int) -> None:
    connector = aiohttp.TCPConnector(limit=50)
    headers = {"Authorization": "Bearer unitgw:org"}
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        semaphore = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            path = ("/cards/{}", "/customers/{}", "/accounts/{}")[i % 3].format(900000 + i)
            async with (
                semaphore,
                session.get(
                    sandbox.url + path, proxy=gateway.proxy_url, headers=headers
                ) as response,
            ):
                await response.read()

        await asyncio.gather(*(one(i) for i in range(count)))


def test_ten_thousand_distinct_ids_add_no_series(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox)
    asyncio.run(_distinct_ids(gateway, sandbox, 30))
    before = series(gateway.metrics_text())
    asyncio.run(_distinct_ids(gateway, sandbox, 10_000))
    after = gateway.metrics_text()
    assert series(after) == before
    assert not re.search(r"\{[^}]*9\d{5}[^}]*\}", after), "no id in any label"
