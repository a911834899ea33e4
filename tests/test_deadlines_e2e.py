"""Unit does not answer in time: the caller gets a JSON:API 504 at the deadline, not a wait
for as long as mitmproxy keeps an idle connection (10 minutes), and the next request goes
through. A real gateway process in front of the sandbox, whose latency switch plays a hung
Unit; Unit's Python SDK as the client in each proxy mode. Every test ends with the leak scan
of the gateway fixture."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from unit import Unit
from unit.models import UnitError, UnitResponse

from conftest import (
    DEADLINE_SLACK_SECONDS,
    GatewayFactory,
    clear_proxy_settings,
    proxied_session,
    saved_flows,
    sdk,
    unit_stats,
    wait_until_unit_answered_all,
)
from unit_gateway.testing import harness

pytestmark = pytest.mark.timeout(90)

CUSTOMER = "10001"
PLACEHOLDER = f"unitgw:customer:{CUSTOMER}"


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_unit_answering_late_is_a_504_at_the_deadline(
    gateway_factory: GatewayFactory,
    tls_sandbox: harness.Sandbox,
    run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    flows = run_dir / "flows.out"
    gateway = gateway_factory(
        tls_sandbox,
        overrides={"unit": {"response_timeout_seconds": 1}},
        mode=f"reverse:{tls_sandbox.url}" if mode == "reverse" else None,
        extra_args=("--set", f"save_stream_file={flows}", "--set", "flow_detail=4"),
    )
    clear_proxy_settings(monkeypatch)
    if mode == "regular":  # through CONNECT, the SDK keeps Unit's URL
        unit = sdk(gateway, tls_sandbox, PLACEHOLDER, monkeypatch)
    else:
        unit = Unit(gateway.proxy_url, PLACEHOLDER)
    assert isinstance(unit.cards.list(), UnitResponse)  # the token is minted and cached

    tls_sandbox.faults(latency_ms=4000)  # Unit hangs longer than the deadline
    started = time.monotonic()
    late = unit.cards.list()
    waited = time.monotonic() - started
    tls_sandbox.faults(latency_ms=0)

    assert isinstance(late, UnitError), late
    error = late.errors[0]
    assert (error.status, error.code) == ("504", "upstream_timeout")
    assert "(Unit): no complete answer within 1 s" in error.detail
    assert "may have acted on it" in error.detail
    assert 1.0 <= waited < 1.0 + DEADLINE_SLACK_SECONDS, waited
    # The connection Unit hung on is closed: its late answer is not read as the next one's.
    again = unit.cards.list()
    assert isinstance(again, UnitResponse), again
    assert all(c.relationships["customer"].id == CUSTOMER for c in again.data)

    stats = unit_stats(tls_sandbox, customer_tokens=1)
    assert stats["requests"]["GET /cards"] == 3, "the late one reached Unit with its token"
    metrics = gateway.metrics_text()
    assert 'unit_gateway_requests_total{method="GET",route="/cards",status="error"} 1.0' in metrics
    assert 'unit_gateway_requests_total{method="GET",route="/cards",status="200"} 2.0' in metrics
    output = gateway.process.output()
    assert "no complete answer within 1 s; answered 504 upstream_timeout" in output

    assert gateway.process.stop() == 0
    errors = [f.error.msg for f in saved_flows(flows) if getattr(f, "error", None)]
    assert errors == ["no complete answer within 1 s"], "mitmweb and saved flows say why"


def test_token_endpoints_get_unit_token_timeout(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    """A caller's own token request the gateway forwards waits Unit's documented 5 s
    (``token_timeout_seconds``), not the 60 s of other routes."""
    gateway = gateway_factory(
        sandbox,
        overrides={"unit": {"token_timeout_seconds": 1, "response_timeout_seconds": 30}},
    )
    body = {"data": {"type": "customerToken", "attributes": {"scope": "customers"}}}
    sandbox.faults(latency_ms=2500)
    started = time.monotonic()
    with proxied_session(gateway) as session:
        answer = session.post(
            f"{sandbox.url}/customers/{CUSTOMER}/token",
            json=body,
            headers={"Authorization": f"Bearer {PLACEHOLDER}"},
            timeout=30,
        )
    waited = time.monotonic() - started
    sandbox.faults(latency_ms=0)
    assert answer.status_code == 504, answer.text
    assert answer.headers["Content-Type"] == "application/vnd.api+json"
    assert answer.json()["errors"][0]["code"] == "upstream_timeout"
    assert 1.0 <= waited < 1.0 + DEADLINE_SLACK_SECONDS, waited
    assert b"v2.public." not in answer.content
    wait_until_unit_answered_all(sandbox)
    assert sandbox.stats()["requests"]["POST /customers/{customerId}/token"] == 1
