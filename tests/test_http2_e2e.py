"""HTTP/2 end to end. Unit's SDKs speak HTTP/1.1, but curl and Go's net/http offer HTTP/2
first, and the gateway mirrors what the caller offered when it connects to Unit: such a caller
speaks HTTP/2 to the gateway, and the gateway to Unit. Unit here is the sandbox behind a real
HTTP/2 server, mitmdump in reverse mode (with the lazy connection strategy it picks HTTP/2
from the gateway's offer, where eager would mirror the sandbox's HTTP/1.1). The caller is
httpx with HTTP/2. Every test ends with the leak scan over the run's outputs."""

from __future__ import annotations

import json
import secrets
import ssl
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import (
    DEADLINE_SLACK_SECONDS,
    GatewayFactory,
    Planted,
    application,
    error_of,
    saved_flows,
    unit_stats,
    wait_until_unit_answered_all,
)
from unit_gateway.testing import harness

pytestmark = pytest.mark.timeout(90)

CUSTOMER = "10001"
PLACEHOLDER = f"unitgw:customer:{CUSTOMER}"
AS_CUSTOMER = {"Authorization": f"Bearer {PLACEHOLDER}"}
AS_ORG = {"Authorization": "Bearer unitgw:org"}
#: The seeded customer's SSN: the caller gets it, flows and logs never show it.
SSN = "900121234"


@pytest.fixture
def http2_unit(run_dir: Path, tls_sandbox: harness.Sandbox) -> Iterator[harness.Sandbox]:
    """Unit as an HTTP/2 server: the TLS sandbox behind mitmdump in reverse mode. Its stats
    and controls are the sandbox's (reached directly)."""
    front = harness.start_bare_mitmdump(
        run_dir,
        name="http2-unit",
        extra_args=[
            "--mode",
            f"reverse:{tls_sandbox.url}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"ssl_verify_upstream_trusted_ca={tls_sandbox.cert_path}",
            "--set",
            "flow_detail=0",  # Unit's side: it sees real tokens, and the run's scan reads it
        ],
    )
    url = front.proxy_url.replace("http://", "https://")
    yield harness.Sandbox(front.process, url, tls_sandbox.org_token, front.ca_path)
    if front.process.proc is not None and front.process.proc.poll() is None:
        assert front.process.stop() == 0


class _HTTP2First(ssl.SSLContext):
    """TLS that offers HTTP/2 first and HTTP/1.1 as the fallback, as curl and Go do (httpx
    offers HTTP/1.1 first, and the gateway takes the caller's first choice)."""

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        super().set_alpn_protocols(sorted(alpn_protocols, key=lambda p: p != "h2"))


def http2_client(gateway: harness.Gateway) -> httpx.Client:
    """A caller that reaches Unit through the gateway (CONNECT), trusts its CA and offers
    HTTP/2 first."""
    tls = _HTTP2First(ssl.PROTOCOL_TLS_CLIENT)
    tls.load_verify_locations(cafile=gateway.ca_path)
    return httpx.Client(
        http2=True, proxy=gateway.proxy_url, verify=tls, trust_env=False, timeout=30
    )


def test_placeholders_over_http2_on_both_sides(
    gateway_factory: GatewayFactory,
    http2_unit: harness.Sandbox,
    tls_sandbox: harness.Sandbox,
    run_dir: Path,
    planted: Planted,
) -> None:
    planted.add("customer SSN", SSN)
    flows = run_dir / "flows.out"
    gateway = gateway_factory(
        http2_unit,
        overrides={"unit": {"missing_authorization": "org"}},
        extra_args=("--set", f"save_stream_file={flows}", "--set", "flow_detail=4"),
    )
    with http2_client(gateway) as client:
        customer = client.get(
            f"{http2_unit.url}/customers/{CUSTOMER}",
            headers=AS_CUSTOMER,
        )
        # No Authorization at all: this gateway sends such requests with the org token.
        org = client.get(f"{http2_unit.url}/customers?page[limit]=5")
    for response in (customer, org):
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200, response.text
        assert "v2.public." not in response.text, "the caller never gets a Unit token"
    assert customer.json()["data"]["attributes"]["ssn"] == SSN, "the caller gets the real body"

    stats = unit_stats(tls_sandbox, customer_tokens=1)
    assert stats["requests"]["GET /customers/{customerId}"] == 1
    assert stats["requests"]["GET /customers"] == 1
    output = gateway.process.output()
    # The org token's header was added in HTTP/2's spelling, not lowercased by mitmproxy.
    assert "Lowercased" not in output

    assert gateway.process.stop() == 0
    saved = saved_flows(flows)
    assert [(f.request.http_version, f.response and f.response.http_version) for f in saved] == [
        ("HTTP/2.0", "HTTP/2.0"),
        ("HTTP/2.0", "HTTP/2.0"),
    ], "HTTP/2 from the caller to the gateway and from the gateway to Unit"
    assert [f.request.headers["authorization"] for f in saved] == [
        f"Bearer {PLACEHOLDER}",
        "Bearer unitgw:org",
    ], "the flows show placeholders"
    stored = saved[0].response.get_content()  # type: ignore[union-attr]
    assert stored is not None and SSN.encode() not in stored


def test_a_challenge_and_secrets_in_bodies_over_http2(
    gateway_factory: GatewayFactory,
    http2_unit: harness.Sandbox,
    tls_sandbox: harness.Sandbox,
    run_dir: Path,
    planted: Planted,
) -> None:
    """The paths that read and rewrite bodies: a challenge the caller completes with Unit's
    create-token request (the gateway swaps in the real verification token and hands back the
    placeholder), and an application whose SSN Unit must get while no output shows it."""
    ssn = planted.add("application SSN", f"{secrets.randbelow(10**9):09d}")
    gateway = gateway_factory(
        http2_unit,
        overrides={"tokens": {"customer": {"two_factor": "challenge"}}},
        extra_args=(
            "--set",
            f"save_stream_file={run_dir / 'flows.out'}",
            "--set",
            f"hardump={run_dir / 'flows.har'}",
            "--set",
            "flow_detail=4",
        ),
    )
    with http2_client(gateway) as client:
        card = client.get(
            f"{http2_unit.url}/cards?filter[customerId]={CUSTOMER}", headers=AS_ORG
        ).json()["data"][0]["id"]
        pan_url = f"{http2_unit.url}/cards/{card}/secure-data/pan"
        asked = client.get(pan_url, headers=AS_CUSTOMER)
        challenge = error_of(asked, 401)
        assert challenge["code"] == "verification_required"
        challenge_id = challenge["meta"]["challengeId"]
        completed = client.post(
            f"{http2_unit.url}/customers/{CUSTOMER}/token",
            headers={**AS_ORG, "Content-Type": "application/vnd.api+json"},
            json={
                "data": {
                    "type": "customerToken",
                    "attributes": {
                        "scope": "customers accounts cards cards-sensitive",
                        "verificationToken": challenge_id,
                        "verificationCode": "000001",
                    },
                }
            },
        )
        assert completed.status_code == 201, completed.text
        assert completed.json()["data"]["attributes"]["token"] == PLACEHOLDER
        pan = client.get(pan_url, headers=AS_CUSTOMER)
        assert pan.status_code == 200, pan.text

        created = client.post(
            f"{http2_unit.url}/applications",
            headers=AS_ORG,
            json=application(ssn, None, "1990-04-12"),
        )
    for response in (asked, completed, pan, created):
        assert response.http_version == "HTTP/2"
        assert "v2.public." not in response.text
    assert created.status_code == 201, created.text
    assert created.json()["data"]["attributes"]["ssn"] == ssn, "Unit got the real SSN"
    planted.blobs.append(("the challenge and its completion", asked.content + completed.content))
    stats = unit_stats(tls_sandbox, customer_tokens=1)
    assert stats["verifications_created"]["customer"] == 1
    # What the scan reads holds every flow: the card lookup, the challenge, its completion,
    # the PAN and the application (stopped here, so /metrics is handed to it first).
    planted.blobs.append(("gateway /metrics", gateway.metrics_text().encode()))
    assert gateway.process.stop() == 0
    assert len(saved_flows(run_dir / "flows.out")) == 5
    assert len(json.loads((run_dir / "flows.har").read_text())["log"]["entries"]) == 5


def test_unit_401_over_http2_is_retried_with_a_new_token(
    gateway_factory: GatewayFactory,
    http2_unit: harness.Sandbox,
    tls_sandbox: harness.Sandbox,
) -> None:
    gateway = gateway_factory(http2_unit)
    cards = f"{http2_unit.url}/cards"
    with http2_client(gateway) as client:
        assert client.get(cards, headers=AS_CUSTOMER).status_code == 200
        # Unit's clock moves past the cached token's expiry: Unit answers 401 to it, and the
        # gateway mints again and retries once.
        tls_sandbox.admin("POST", "/__sandbox/clock", {"advance_seconds": 7200})
        retried = client.get(cards, headers=AS_CUSTOMER)
    assert retried.http_version == "HTTP/2"
    assert retried.status_code == 200, retried.text
    assert "v2.public." not in retried.text
    stats = unit_stats(tls_sandbox, customer_tokens=2)
    assert stats["responses"]["401"] == 1
    assert stats["requests"]["GET /cards"] == 3, "first, 401, retry"


def test_unit_answering_late_over_http2_is_a_504_at_the_deadline(
    gateway_factory: GatewayFactory,
    http2_unit: harness.Sandbox,
    tls_sandbox: harness.Sandbox,
    planted: Planted,
) -> None:
    gateway = gateway_factory(http2_unit, overrides={"unit": {"response_timeout_seconds": 1}})
    cards = f"{http2_unit.url}/cards"
    with http2_client(gateway) as client:
        assert client.get(cards, headers=AS_CUSTOMER).status_code == 200
        tls_sandbox.faults(latency_ms=4000)  # Unit hangs longer than the deadline
        started = time.monotonic()
        late = client.get(cards, headers=AS_CUSTOMER)
        waited = time.monotonic() - started
        tls_sandbox.faults(latency_ms=0)
        # HTTP/2 cancels only the overdue stream: the connection to Unit carries the next.
        again = client.get(cards, headers=AS_CUSTOMER)
    planted.blobs.append(("the late answer", late.content))
    error = error_of(late, 504)
    assert error["code"] == "upstream_timeout"
    assert "(Unit): no complete answer within 1 s" in error["detail"]
    assert 1.0 <= waited < 1.0 + DEADLINE_SLACK_SECONDS, waited
    assert again.status_code == 200, again.text
    assert again.http_version == "HTTP/2"
    output = gateway.process.output()
    assert "no complete answer within 1 s; answered 504 upstream_timeout" in output
    assert "mitmproxy's timeouts apply" not in output
    wait_until_unit_answered_all(tls_sandbox)
    stats = unit_stats(tls_sandbox, customer_tokens=1)
    assert stats["requests"]["GET /cards"] == 3, "the late one reached Unit with its token"


def test_unit_outage_over_http2_is_a_json_api_error(
    gateway_factory: GatewayFactory,
    http2_unit: harness.Sandbox,
    tls_sandbox: harness.Sandbox,
    planted: Planted,
) -> None:
    gateway = gateway_factory(http2_unit)
    with http2_client(gateway) as client:
        assert client.get(f"{http2_unit.url}/cards", headers=AS_ORG).status_code == 200
        assert http2_unit.process.stop() == 0  # Unit goes away
        down = client.get(f"{http2_unit.url}/cards", headers=AS_ORG)
    assert down.http_version == "HTTP/2"
    planted.blobs.append(("the outage answer", down.content))
    error = error_of(down, 502)
    assert error["code"] == "upstream_unreachable"
    assert f"{http2_unit.url.removeprefix('https://')} (Unit)" in error["detail"]
    assert tls_sandbox.stats()["requests"]["GET /cards"] == 1
