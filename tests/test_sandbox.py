"""The local Unit sandbox over raw HTTP: tokens, two-factor rules, limits, faults, process life."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import error_of, port_of
from unit_gateway.net import jsonapi
from unit_gateway.sandbox import server
from unit_gateway.sandbox.data import luhn_valid
from unit_gateway.sandbox.routes import lenient_path
from unit_gateway.unit_api import paseto

if TYPE_CHECKING:
    from sandbox_fixtures import SandboxFactory, SandboxProcess

# Imported here rather than above so pytest rewrites its asserts.
pytest_plugins = ["sandbox_fixtures"]

TWO_FACTOR = "cards cards-write cards-sensitive"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- paseto ----------------------------------------------------------------------------------


def test_paseto_round_trip_and_rejections() -> None:
    key = b"k" * 32
    claims = {"role": "customer", "scope": "cards", "exp": "2026-11-21T10:00:00.000Z"}
    token = paseto.encode(claims, key)
    assert token.startswith("v2.public.") and "=" not in token
    assert paseto.claims_of(token) == claims
    assert paseto.verify(token, key) == claims
    assert paseto.verify(token, b"x" * 32) is None
    assert paseto.expiry_of(claims) == datetime(2026, 11, 21, 10, tzinfo=UTC)
    # A flipped byte in the signature: still readable, no longer verifiable.
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert paseto.claims_of(tampered) == claims
    assert paseto.verify(tampered, key) is None
    for garbage in ("", "unitgw:org", "v2.public.", "v2.public.!!!!", "v2.local." + token[10:]):
        assert paseto.claims_of(garbage) is None
    not_an_object = paseto.encode([1, 2], key)  # type: ignore[arg-type]
    assert paseto.claims_of(not_an_object) is None
    assert paseto.expiry_of({"exp": "soon"}) is None
    assert paseto.expiry_of({}) is None


# --- process life ----------------------------------------------------------------------------


def test_startup_lines_print_only_a_generated_token(start_sandbox: SandboxFactory) -> None:
    generated = start_sandbox(org_token=None)
    listening = [line for line in generated.stdout if "listening on" in line]
    assert listening == [f"unit-gateway sandbox listening on {generated.url}"]
    assert generated.url.startswith("http://127.0.0.1:")
    assert generated.org_token and paseto.claims_of(generated.org_token)["role"] == "org"  # type: ignore[index]
    assert generated.org("GET", "/cards/30001").ok  # the printed token is the one it accepts

    given = start_sandbox()
    assert given.org("GET", "/cards/30001").ok
    given.plain_customer_token("10001", "cards")
    assert not any(line.startswith("org token:") for line in given.stdout)
    assert given.org_token is not None and given.org_token not in given.output()


def test_org_token_flag_and_access_log_never_show_tokens(start_sandbox: SandboxFactory) -> None:
    token = "v2.public.flag-token-for-this-test"
    box = start_sandbox("--org-token", token, "--access-log", org_token=token, env_token=False)
    customer = box.plain_customer_token("10001", "cards")
    assert box.request("GET", "/cards/30001", customer).ok
    verification = box.verification("10002")
    deadline = time.monotonic() + 10
    while not any(
        "POST /customers/{customerId}/token/verification 201" in line for line in box.stderr
    ):
        assert time.monotonic() < deadline, box.output()
        time.sleep(0.05)
    assert any("GET /cards/{cardId} 200" in line for line in box.stderr)
    for secret in (token, customer, verification, "jane.doe@example.com", "900121234"):
        assert secret not in box.output()


def test_sigterm_exits_zero_and_frees_the_port(start_sandbox: SandboxFactory) -> None:
    box = start_sandbox()
    port = port_of(box.url)
    assert not port_is_free(port)
    assert box.stop(signal.SIGTERM) == 0
    assert port_is_free(port)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_repeated_signal_while_a_request_finishes_exits_zero(
    signum: signal.Signals, start_sandbox: SandboxFactory
) -> None:
    """A stopping process (the harness repeats SIGTERM every 2 s; a person presses Ctrl-C
    again) waits for a slow request; no later signal may kill it, up to the very end of the
    loop."""
    box = start_sandbox("--latency-ms", "1500")
    session = requests.Session()
    slow = threading.Thread(
        target=lambda: session.get(box.url + "/cards/30001", timeout=10), daemon=True
    )
    slow.start()
    time.sleep(0.3)  # the request is in its handler
    while box.proc.poll() is None:
        box.proc.send_signal(signum)
        time.sleep(0.01)
    slow.join(10)
    assert box.stop() == 0, box.output()


def test_sigint_exits_zero(start_sandbox: SandboxFactory) -> None:
    box = start_sandbox()
    assert box.stop(signal.SIGINT) == 0


def test_start_inside_a_running_loop_with_es256_jwt(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "jwt.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    claims = {"sub": "user|10003", "exp": int(time.time()) + 300}
    body = {
        "data": {
            "type": "customerToken",
            "attributes": {"scope": "payments-write", "jwtToken": jwt.encode(claims, key, "ES256")},
        }
    }

    async def embedded() -> tuple[int, int, dict[str, Any]]:
        # As the gateway does: start() inside a loop that is already running.
        sandbox = await server.start(
            server.SandboxSettings(port=0, org_token="org-secret", jwt_public_key=public)
        )
        try:
            assert sandbox.url == f"http://127.0.0.1:{sandbox.port}"
            assert sandbox.cert_path is None and sandbox.org_token == "org-secret"
            async with (
                aiohttp.ClientSession() as client,
                client.post(
                    sandbox.url + "/customers/10003/token",
                    json=body,
                    headers={"Authorization": "Bearer org-secret"},
                ) as response,
            ):
                document = await response.json(content_type=None)
                status = response.status
            assert sandbox.state.stats.jwt_tokens_accepted == 1
        finally:
            await sandbox.stop()
        return sandbox.port, status, document

    port, status, document = asyncio.run(embedded())
    assert status == 201, document
    assert document["data"]["type"] == "customerBearerToken"
    assert port_is_free(port)


def test_bad_settings_exit_nonzero(tmp_path: Path) -> None:
    import subprocess
    import sys

    from sandbox_fixtures import LAUNCH

    for args in (["--error-rate", "2"], ["--jwt-public-key", str(tmp_path / "missing.pem")]):
        result = subprocess.run(
            [sys.executable, "-c", LAUNCH, "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert "unit-gateway sandbox:" in result.stderr


# --- authentication --------------------------------------------------------------------------


def test_401_for_missing_malformed_unknown_and_expired_tokens(box: SandboxProcess) -> None:
    assert error_of(box.request("GET", "/cards/30001"), 401)["code"] == "missing_token"
    basic = box.request("GET", "/cards/30001", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert error_of(basic, 401)["code"] == "malformed_token"
    assert error_of(box.request("GET", "/cards/30001", "not-a-token"), 401)
    forged = paseto.encode(
        {
            "role": "customer",
            "customerId": "10001",
            "scope": "cards",
            "exp": "2099-01-01T00:00:00.000Z",
        },
        b"a key the sandbox does not have",
    )
    assert error_of(box.request("GET", "/cards/30001", forged), 401)["code"] == "invalid_token"

    short = box.plain_customer_token("10001", "cards", expiresIn=60)
    claims = paseto.claims_of(short)
    assert claims is not None and claims["customerId"] == "10001" and claims["scope"] == "cards"
    expiry = paseto.expiry_of(claims)
    assert expiry is not None
    assert timedelta(seconds=50) < expiry - datetime.now(UTC) <= timedelta(seconds=61)
    assert box.request("GET", "/cards/30001", short).ok
    box.advance(61)
    assert error_of(box.request("GET", "/cards/30001", short), 401)["code"] == "expired_token"


def test_403_for_missing_scope_and_other_peoples_resources(box: SandboxProcess) -> None:
    jane = box.plain_customer_token("10001", "customers accounts cards")
    assert box.request("GET", "/customers/10001", jane).ok
    assert error_of(box.request("GET", "/payments", jane), 403)["code"] == "insufficient_scope"
    assert error_of(box.request("GET", "/customers/10002", jane), 403)
    assert error_of(box.request("GET", "/cards/30003", jane), 403)
    assert error_of(box.request("GET", "/accounts/20003", jane), 403)
    assert error_of(box.request("GET", "/cards/39999", jane), 404)
    # A customer token cannot mint tokens, whatever its scopes.
    body = {"data": {"type": "customerToken", "attributes": {"scope": "cards"}}}
    assert error_of(box.request("POST", "/customers/10001/token", jane, body), 403)

    cards = box.request("GET", "/cards", jane).json()["data"]
    assert sorted(c["id"] for c in cards) == ["30001", "30002"]
    accounts = box.request("GET", "/accounts?filter[customerId]=10002", jane).json()["data"]
    assert accounts == []


def test_cardholder_token_serves_exactly_one_card(box: SandboxProcess) -> None:
    response = box.cardholder_token("30005", "cards")
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert data["type"] == "cardholderBearerToken" and data["attributes"]["expiresIn"] == 86400
    token = data["attributes"]["token"]
    claims = paseto.claims_of(token)
    assert claims is not None and claims["role"] == "cardholder" and claims["cardId"] == "30005"
    assert box.request("GET", "/cards/30005", token).ok
    assert error_of(box.request("GET", "/cards/30006", token), 403)
    assert [c["id"] for c in box.request("GET", "/cards", token).json()["data"]] == ["30005"]
    assert error_of(box.request("GET", "/customers/10004", token), 403)
    assert error_of(box.request("GET", "/cards/30005/secure-data/pan", token), 403)

    pointer = error_of(box.cardholder_token("30005", "cards customers"), 400)["source"]["pointer"]
    assert pointer == "/data/attributes/scope"
    assert error_of(box.cardholder_token("30005", "cards-sensitive"), 400)["code"] == (
        "verification_required"
    )
    assert error_of(box.cardholder_token("39999", "cards"), 404)
    assert error_of(box.cardholder_token("30005", "cards", jwtToken="x.y.z"), 400)

    verification = box.cardholder_verification("30005").json()["data"]
    assert verification["type"] == "cardholderTokenVerification"
    sensitive = box.cardholder_token(
        "30005",
        "cards cards-sensitive",
        verificationToken=verification["attributes"]["verificationToken"],
        verificationCode="000001",
        upgradableScope="cards-write",
    )
    assert sensitive.status_code == 201, sensitive.text
    pan_token = sensitive.json()["data"]["attributes"]["token"]
    pan = box.request("GET", "/cards/30005/secure-data/pan", pan_token).json()
    assert luhn_valid(pan["data"]["attributes"]["pan"])


# --- creating customer tokens ----------------------------------------------------------------


@pytest.mark.parametrize("expires_in", [0, -5, 86401, "60", 1.5, True])
def test_expires_in_must_be_1_to_86400(box: SandboxProcess, expires_in: Any) -> None:
    error = error_of(box.customer_token("10001", "cards", expiresIn=expires_in), 400)
    assert error["source"]["pointer"] == "/data/attributes/expiresIn"


def test_token_defaults_and_request_validation(box: SandboxProcess) -> None:
    response = box.customer_token("10001", "cards accounts", expiresIn=86400)
    assert response.status_code == 201
    assert response.headers["Content-Type"] == jsonapi.MEDIA_TYPE
    data = response.json()["data"]
    assert data["type"] == "customerBearerToken"
    claims = paseto.claims_of(data["attributes"]["token"])
    assert claims is not None
    assert claims["sub"] == "customer/10001/jane.doe@example.com"
    assert {"jti", "orgId", "userType", "exp"} <= claims.keys()
    assert box.customer_token("10001", "cards").json()["data"]["attributes"]["expiresIn"] == 86400

    assert error_of(box.customer_token("10001", "cards wizardry"), 400)["code"] == "invalid_scope"
    assert error_of(box.customer_token("10001", ""), 400)["source"]["pointer"] == (
        "/data/attributes/scope"
    )
    assert error_of(box.customer_token("19999", "cards"), 404)
    wrong_type = {"data": {"type": "cardholderToken", "attributes": {"scope": "cards"}}}
    assert error_of(box.org("POST", "/customers/10001/token", wrong_type), 400)["source"] == {
        "pointer": "/data/type"
    }
    upgradable = box.customer_token("10001", "cards", upgradableScope="cards-write payments-write")
    assert upgradable.status_code == 201


def test_two_factor_scopes_need_a_fresh_single_use_verification(box: SandboxProcess) -> None:
    for scope in ("cards-write", "payments-write", "ach-payments-write", "counterparties-write"):
        error = error_of(box.customer_token("10001", f"cards {scope}"), 400)
        assert error["code"] == "verification_required"

    verification = box.verification("10001")
    wrong = box.customer_token(
        "10001", TWO_FACTOR, verificationToken=verification, verificationCode="123456"
    )
    assert error_of(wrong, 400)["code"] == "invalid_verification_code"
    other_customer = box.customer_token(
        "10002", TWO_FACTOR, verificationToken=verification, verificationCode="000001"
    )
    assert error_of(other_customer, 400)["code"] == "invalid_verification_token"
    ok = box.customer_token(
        "10001", TWO_FACTOR, verificationToken=verification, verificationCode="000001"
    )
    assert ok.status_code == 201, ok.text
    reused = box.customer_token(
        "10001", TWO_FACTOR, verificationToken=verification, verificationCode="000001"
    )
    assert error_of(reused, 400)["code"] == "verification_token_used"

    # Valid for 10 minutes after its creation.
    almost = box.verification("10001")
    box.advance(599)
    assert box.customer_token(
        "10001", TWO_FACTOR, verificationToken=almost, verificationCode="000001"
    ).ok
    stale = box.verification("10001")
    box.advance(600)
    expired = box.customer_token(
        "10001", TWO_FACTOR, verificationToken=stale, verificationCode="000001"
    )
    assert error_of(expired, 400)["code"] == "verification_token_expired"

    # Tokens for non-two-factor scopes need no verification at all.
    assert box.customer_token("10001", "cards accounts customers payments transactions").ok


def test_verification_requests_are_validated_and_limited(box: SandboxProcess) -> None:
    def verify(customer: str, attributes: dict[str, Any]) -> requests.Response:
        body = {"data": {"type": "customerTokenVerification", "attributes": attributes}}
        return box.org("POST", f"/customers/{customer}/token/verification", body)

    assert error_of(verify("10001", {}), 400)["source"]["pointer"] == "/data/attributes/channel"
    assert error_of(verify("10001", {"channel": "email"}), 400)
    assert error_of(verify("10001", {"channel": "sms", "appHash": "short"}), 400)
    assert error_of(verify("19999", {"channel": "sms"}), 404)
    call = verify(
        "10001", {"channel": "call", "phone": {"countryCode": "1", "number": "5555550101"}}
    )
    assert call.status_code == 201

    for _ in range(4):
        assert verify("10001", {"channel": "sms", "language": "es"}).status_code == 201
    sixth = verify("10001", {"channel": "sms"})
    assert error_of(sixth, 429)["code"] == "verification_rate_limited"
    assert "Retry-After" not in sixth.headers
    assert verify("10002", {"channel": "sms"}).status_code == 201  # per customer
    box.advance(601)
    assert verify("10001", {"channel": "sms"}).status_code == 201

    stats = box.stats()
    assert stats["verifications_created"] == {"customer": 7, "cardholder": 0}
    assert stats["verifications_rate_limited"] == 1


# --- JWT -------------------------------------------------------------------------------------


def test_jwt_tokens_against_the_configured_key(
    start_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "jwt-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    box = start_sandbox("--jwt-public-key", str(public))

    def signed(sub: str, lifetime: int = 300, signer: Any = key) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + lifetime}, signer, "RS256")

    ok = box.customer_token("10001", TWO_FACTOR + " payments-write", jwtToken=signed("user|10001"))
    assert ok.status_code == 201, ok.text
    token = ok.json()["data"]["attributes"]["token"]
    assert box.request("GET", "/cards/30001/secure-data/cvv2", token).ok
    # A business customer's contact and authorized users log in with their own subjects.
    assert box.customer_token("10004", "cards-write", jwtToken=signed("monica|sandbox")).ok

    mismatch = box.customer_token("10001", "cards-write", jwtToken=signed("user|10003"))
    assert error_of(mismatch, 401)["code"] == "jwt_subject_mismatch"
    expired = box.customer_token("10001", "cards-write", jwtToken=signed("user|10001", -10))
    assert error_of(expired, 401)["code"] == "expired_jwt"
    later = box.customer_token("10001", "cards-write", jwtToken=signed("user|10001", 120))
    assert later.ok
    box.advance(121)  # the sandbox clock decides, not the wall clock
    aged = box.customer_token("10001", "cards-write", jwtToken=signed("user|10001", 120))
    assert error_of(aged, 401)["code"] == "expired_jwt"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = box.customer_token(
        "10001", "cards-write", jwtToken=signed("user|10001", 300, other_key)
    )
    assert error_of(forged, 401)["code"] == "invalid_jwt"
    hs256 = jwt.encode({"sub": "user|10001", "exp": int(time.time()) + 300}, "s" * 32, "HS256")
    assert error_of(box.customer_token("10001", "cards-write", jwtToken=hs256), 401)
    assert box.stats()["jwt_tokens_accepted"] == 3


def test_jwt_without_a_configured_key_is_refused(box: SandboxProcess) -> None:
    error = error_of(box.customer_token("10001", "cards-write", jwtToken="a.b.c"), 400)
    assert error["code"] == "jwt_not_configured"


# --- HTTP-level errors -----------------------------------------------------------------------


def test_404_405_400_415_are_json_api(box: SandboxProcess) -> None:
    assert error_of(box.org("GET", "/nowhere"), 404)
    assert error_of(box.org("GET", "/cards/30001/nowhere"), 404)
    assert error_of(box.org("GET", "/cards/"), 404)
    not_allowed = box.org("DELETE", "/cards/30001")
    error_of(not_allowed, 405)
    assert not_allowed.headers["Allow"] == "GET, PATCH"
    assert box.org("PUT", "/customers/10001/token").headers["Allow"] == "POST"
    assert error_of(box.org("PATCH", "/cards/30001", {"data": {}}), 501)

    malformed = box.request(
        "POST",
        "/customers/10001/token",
        box.org_token,
        data=b'{"data": {"type": "customerToken",',
        headers={"Content-Type": jsonapi.MEDIA_TYPE},
    )
    assert error_of(malformed, 400)["code"] == "malformed_json"
    as_text = box.request(
        "POST",
        "/customers/10001/token",
        box.org_token,
        data=json.dumps({"data": {"type": "customerToken", "attributes": {"scope": "cards"}}}),
        headers={"Content-Type": "text/plain"},
    )
    error_of(as_text, 415)
    as_json = box.request(
        "POST",
        "/customers/10001/token",
        box.org_token,
        data=json.dumps({"data": {"type": "customerToken", "attributes": {"scope": "cards"}}}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert as_json.status_code == 201
    assert error_of(box.org("POST", "/customers/10001/token", None), 400)["source"] == {
        "pointer": "/data"
    }


# --- rate limit ------------------------------------------------------------------------------


def test_rate_limit_without_headers(box: SandboxProcess) -> None:
    box.faults(rate_limit_per_minute=3)
    for _ in range(3):
        response = box.org("GET", "/cards/30001")
        assert response.ok
        assert not any(h.lower().startswith("x-ratelimit") for h in response.headers)
    limited = box.org("GET", "/cards/30001")
    assert error_of(limited, 429)["code"] == "rate_limited"
    assert "Retry-After" not in limited.headers
    assert error_of(box.request("GET", "/nowhere"), 429)  # every API request counts
    assert box.stats()["rate_limited"] == 2  # /__sandbox is never limited
    box.advance(60)
    assert box.org("GET", "/cards/30001").ok


def test_rate_limit_with_headers(box: SandboxProcess) -> None:
    box.faults(rate_limit_per_minute=3, rate_limit_headers=True)
    remaining = []
    for _ in range(3):
        response = box.org("GET", "/cards/30001")
        assert response.headers["X-RateLimit-Limit"] == "3"
        remaining.append(response.headers["X-RateLimit-Remaining"])
        reset = int(response.headers["X-RateLimit-Reset"])
        assert 0 < reset - time.time() <= 61
    assert remaining == ["2", "1", "0"]
    box.advance(20)
    limited = box.org("GET", "/cards/30001")
    error_of(limited, 429)
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert 35 <= int(limited.headers["Retry-After"]) <= 41
    box.advance(41)
    assert box.org("GET", "/cards/30001").headers["X-RateLimit-Remaining"] == "2"


def test_rate_limit_headers_on_verification_limit(box: SandboxProcess) -> None:
    box.faults(rate_limit_headers=True)
    for _ in range(5):
        assert box.cardholder_verification("30001").status_code == 201
    sixth = box.cardholder_verification("30001")
    error_of(sixth, 429)
    assert 590 <= int(sixth.headers["Retry-After"]) <= 600


# --- faults ----------------------------------------------------------------------------------


def test_faults_set_at_start(start_sandbox: SandboxFactory) -> None:
    faulty = start_sandbox("--latency-ms", "500", "--error-rate", "1")
    started = time.monotonic()
    error = error_of(faulty.org("GET", "/cards/30001"), 500)
    assert time.monotonic() - started >= 0.5
    assert error["code"] == "injected_fault"
    error_of(faulty.org("GET", "/accounts"), 503)  # alternates 500 / 503
    assert faulty.customer_token("10001", "cards").status_code == 201  # token endpoints exempt
    started = time.monotonic()
    stats = faulty.stats()
    assert time.monotonic() - started < 0.5  # /__sandbox is never slowed
    assert stats["faults_injected"]["error"] == 2

    outage = start_sandbox("--token-outage", "--rate-limit", "2", "--rate-limit-headers")
    assert error_of(outage.customer_token("10001", "cards"), 503)
    assert outage.org("GET", "/cards/30001").ok  # token endpoints down, the rest is up
    limited = outage.org("GET", "/cards/30001")
    error_of(limited, 429)  # the third request: the limit from the command line
    assert "Retry-After" in limited.headers
    assert outage.faults() == {
        "latency_ms": 0.0,
        "error_rate": 0.0,
        "token_outage": True,
        "reject_user_tokens": False,
        "rate_limit_per_minute": 2,
        "rate_limit_headers": True,
        "lenient_paths": False,
    }


def test_faults_switched_at_run_time(box: SandboxProcess) -> None:
    assert box.faults(latency_ms=250)["latency_ms"] == 250
    started = time.monotonic()
    assert box.org("GET", "/cards/30001").ok
    assert time.monotonic() - started >= 0.25
    faults = box.faults(latency_ms=0, error_rate=1.0)
    assert faults["rate_limit_per_minute"] == 1000  # partial update keeps the rest
    assert box.org("GET", "/cards/30001").status_code in (500, 503)
    assert box.faults(error_rate=0, token_outage=True)["token_outage"] is True
    assert box.org("GET", "/cards/30001").ok
    error_of(box.customer_token("10001", "cards"), 503)
    error_of(box.cardholder_verification("30001"), 503)
    box.faults(token_outage=False)
    assert box.customer_token("10001", "cards").ok

    for bad in ({"error_rate": 2}, {"latency_ms": "slow"}, {"token_outage": 1}, {"nope": True}):
        response = box.http.post(box.url + "/__sandbox/faults", json=bad, timeout=10)
        assert error_of(response, 400)["code"] == "invalid_fault"
    assert box.faults()["error_rate"] == 0  # a refused update changes nothing


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/cards/30001", "/cards/30001"),
        ("/cards/30001#x/../y", "/cards/30001"),
        ("/cards/30001?next=/../x", "/cards/30001"),
        ("/cards%2F30001", "/cards/30001"),
        ("/cards%252F30001", "/cards/30001"),  # decoded twice
        ("/cards\\30001", "/cards/30001"),
        ("/cards/30001;jsessionid=1", "/cards/30001"),
        ("/cards/30001.", "/cards/30001"),
        ("/cards/30001%00/x", "/cards/30001"),
        ("/x/../cards/./30001", "/cards/30001"),
        ("/cards/30001/%2e%2E/30001", "/cards/30001"),
        ("//cards///30001/", "/cards/30001"),
        ("/../../cards/30001", "/cards/30001"),
    ],
)
def test_lenient_path_takes_every_liberty(target: str, path: str) -> None:
    assert lenient_path(target) == path


def test_lenient_paths_switch(box: SandboxProcess) -> None:
    def status(target: str) -> int:
        # http.client sends the target as given; requests would tidy it first.
        host, port = box.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", target, headers={"Authorization": f"Bearer {box.org_token}"})
        answer = conn.getresponse()
        answer.read()
        conn.close()
        return answer.status

    target = "/x/../CARDS/30001;v=1"
    assert status(target) == 404
    assert box.faults(lenient_paths=True)["lenient_paths"] is True
    assert status(target) == 200
    assert box.stats()["requests"]["GET /cards/{cardId}"] == 1
    box.faults(lenient_paths=False)
    assert status(target) == 404


def test_clock_controls(box: SandboxProcess) -> None:
    before = box.control("GET", "clock")
    box.advance(3600)
    after = box.control("GET", "clock")
    assert after["offset_seconds"] == before["offset_seconds"] + 3600
    response = box.http.post(box.url + "/__sandbox/clock", json={"advance_seconds": -1}, timeout=10)
    error_of(response, 400)
    assert box.control("POST", "reset")["clock"]["offset_seconds"] == 0
    error_of(box.http.get(box.url + "/__sandbox/nothing", timeout=10), 404)
    error_of(box.http.get(box.url + "/__sandbox/reset", timeout=10), 405)


# --- TLS -------------------------------------------------------------------------------------


def test_tls_with_the_printed_certificate(start_sandbox: SandboxFactory) -> None:
    box = start_sandbox("--tls")
    assert box.url.startswith("https://127.0.0.1:")
    assert box.cert_path is not None and box.cert_path.is_file()
    assert any(line == f"certificate: {box.cert_path}" for line in box.stdout)
    assert box.org("GET", "/cards/30001").ok  # verified against the printed CA
    localhost = box.url.replace("127.0.0.1", "localhost")
    assert box.http.get(localhost + "/__sandbox/health", timeout=10).ok
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(box.url + "/__sandbox/health", timeout=10)  # the system CAs do not know it


# --- stats -----------------------------------------------------------------------------------


def test_stats_count_routes_statuses_tokens_and_missing_authorization(box: SandboxProcess) -> None:
    box.org("GET", "/cards/30001")
    box.org("GET", "/cards/30002")
    box.request("GET", "/cards/30001")  # no Authorization at all
    box.request("GET", "/cards/30001", "garbage")  # a bad token is still a token
    box.request("GET", "/nowhere")
    box.request("DELETE", "/cards/30001")
    box.plain_customer_token("10001", "cards")
    box.customer_token_2fa("10002", "cards-write")
    box.cardholder_token("30005", "cards")
    box.cardholder_verification("30005")

    stats = box.stats()
    assert stats["requests"] == {
        "GET /cards/{cardId}": 4,
        "GET ?": 1,
        "DELETE /cards/{cardId}": 1,
        "POST /customers/{customerId}/token": 2,
        "POST /customers/{customerId}/token/verification": 1,
        "POST /cards/{cardId}/cardholder/token": 1,
        "POST /cards/{cardId}/cardholder/token/verification": 1,
    }
    assert stats["responses"] == {"200": 2, "201": 5, "401": 2, "404": 1, "405": 1}
    assert stats["tokens_created"] == {"customer": 2, "cardholder": 1}
    assert stats["verifications_created"] == {"customer": 1, "cardholder": 1}
    assert stats["unauthenticated"] == {"GET /cards/{cardId}": 1}
    assert stats["jwt_tokens_accepted"] == 0
    assert stats["total_requests"] == 11

    box.control("POST", "reset")
    cleared = box.stats()
    assert cleared["requests"] == {} and cleared["tokens_created"] == {
        "customer": 0,
        "cardholder": 0,
    }
    assert box.org("GET", "/cards/30001").ok  # data and tokens survive a reset


# --- resources -------------------------------------------------------------------------------


def test_card_secure_data_and_pin(box: SandboxProcess) -> None:
    jane = box.customer_token_2fa("10001", "cards cards-sensitive cards-sensitive-write")
    card = box.request("GET", "/cards/30001", jane).json()["data"]
    pan = box.request("GET", "/cards/30001/secure-data/pan", jane).json()
    assert pan["data"]["type"] == "cardSecureData"
    number = pan["data"]["attributes"]["pan"]
    assert len(number) == 16 and luhn_valid(number)
    assert number.endswith(card["attributes"]["last4Digits"])
    assert number.startswith(card["attributes"]["bin"])
    cvv2 = box.request("GET", "/cards/30001/secure-data/cvv2", jane).json()["data"]["attributes"]
    assert len(cvv2["cvv2"]) == 3 and cvv2["cvv2"].isdigit()
    assert error_of(box.request("GET", "/cards/30003/secure-data/pan", jane), 403)

    plain = box.plain_customer_token("10001", "cards")
    assert error_of(box.request("GET", "/cards/30001/secure-data/pan", plain), 403)

    status = box.request("GET", "/cards/30002/secure-data/pin/status", jane).json()
    assert status["data"] == {"type": "pinStatus", "attributes": {"status": "NotSet"}}
    bad_pin = {"data": {"type": "setPin", "attributes": {"pin": "12a4"}}}
    assert error_of(box.request("POST", "/cards/30002/secure-data/pin", jane, bad_pin), 400)
    set_pin = {"data": {"type": "setPin", "attributes": {"pin": "4321"}}}
    assert box.request("POST", "/cards/30002/secure-data/pin", jane, set_pin).ok
    status = box.request("GET", "/cards/30002/secure-data/pin/status", jane).json()
    assert status["data"]["attributes"]["status"] == "Set"


def test_customer_token_resources_restrict_cards(box: SandboxProcess) -> None:
    token = box.plain_customer_token(
        "10001", "cards accounts", resources=[{"type": "card", "ids": ["30002"]}]
    )
    assert [c["id"] for c in box.request("GET", "/cards", token).json()["data"]] == ["30002"]
    assert error_of(box.request("GET", "/cards/30001", token), 403)
    assert box.request("GET", "/accounts/20001", token).ok  # accounts were not restricted
    foreign = box.customer_token("10001", "cards", resources=[{"type": "card", "ids": ["30003"]}])
    assert error_of(foreign, 400)


def test_create_card_payment_and_see_the_money_move(box: SandboxProcess) -> None:
    jane = box.customer_token_2fa(
        "10001", "cards cards-write accounts payments payments-write transactions"
    )
    new_card = {
        "data": {
            "type": "individualDebitCard",
            "attributes": {
                "shippingAddress": {
                    "street": "1 Main St",
                    "city": "Palo Alto",
                    "state": "CA",
                    "postalCode": "94301",
                    "country": "US",
                },
                "idempotencyKey": "card-1",
            },
            "relationships": {"account": {"data": {"type": "depositAccount", "id": "20002"}}},
        }
    }
    created = box.request("POST", "/cards", jane, new_card)
    assert created.status_code == 201, created.text
    card = created.json()["data"]
    assert card["relationships"]["customer"]["data"]["id"] == "10001"
    again = box.request("POST", "/cards", jane, new_card).json()["data"]
    assert again["id"] == card["id"]  # the same idempotencyKey gives the same card
    assert box.request("GET", f"/cards/{card['id']}", jane).ok
    foreign = json.loads(json.dumps(new_card))
    foreign["data"]["relationships"]["account"]["data"]["id"] = "20003"
    foreign["data"]["attributes"]["idempotencyKey"] = "card-2"
    assert error_of(box.request("POST", "/cards", jane, foreign), 403)
    business = json.loads(json.dumps(foreign))
    business["data"]["relationships"]["account"]["data"]["id"] = "20005"
    assert error_of(box.org("POST", "/cards", business), 400)

    before = box.request("GET", "/accounts/20001", jane).json()["data"]["attributes"]["balance"]
    payment: dict[str, Any] = {
        "data": {
            "type": "bookPayment",
            "attributes": {"amount": 1234, "description": "Dinner"},
            "relationships": {
                "account": {"data": {"type": "depositAccount", "id": "20001"}},
                "counterpartyAccount": {"data": {"type": "depositAccount", "id": "20004"}},
            },
        }
    }
    sent = box.request("POST", "/payments", jane, payment)
    assert sent.status_code == 201, sent.text
    assert sent.json()["data"]["attributes"]["status"] == "Sent"
    after = box.request("GET", "/accounts/20001", jane).json()["data"]["attributes"]["balance"]
    assert after == before - 1234
    mine = box.request("GET", "/transactions?filter[accountId]=20001", jane).json()["data"]
    assert mine[0]["attributes"]["amount"] == 1234 and mine[0]["attributes"]["direction"] == "Debit"
    theirs = box.org("GET", "/transactions?filter[accountId]=20004").json()["data"]
    assert theirs[0]["attributes"]["direction"] == "Credit"
    assert error_of(
        box.request("GET", f"/accounts/20004/transactions/{theirs[0]['id']}", jane), 403
    )

    payment["data"]["attributes"]["amount"] = 10**12
    rejected = box.request("POST", "/payments", jane, payment).json()["data"]["attributes"]
    assert rejected["status"] == "Rejected" and rejected["reason"] == "InsufficientFunds"

    ach: dict[str, Any] = {
        "data": {
            "type": "achPayment",
            "attributes": {
                "amount": 500,
                "direction": "Credit",
                "description": "Rent",
                "counterparty": {
                    "name": "Landlord",
                    "routingNumber": "091000019",
                    "accountNumber": "5555",
                    "accountType": "Checking",
                },
            },
            "relationships": {"account": {"data": {"type": "depositAccount", "id": "20001"}}},
        }
    }
    pending = box.request("POST", "/payments", jane, ach)
    assert pending.status_code == 201, pending.text
    assert pending.json()["data"]["attributes"]["status"] == "Pending"
    del ach["data"]["attributes"]["counterparty"]
    assert error_of(box.request("POST", "/payments", jane, ach), 400)["source"]["pointer"] == (
        "/data/attributes/counterparty"
    )
    listed = box.request("GET", "/payments", jane).json()
    assert all(
        p["relationships"]["account"]["data"]["id"] in ("20001", "20002") for p in listed["data"]
    )


def test_applications_echo_pii_and_open_a_customer(box: SandboxProcess) -> None:
    application: dict[str, Any] = {
        "data": {
            "type": "individualApplication",
            "attributes": {
                "ssn": "900551234",
                "fullName": {"first": "Ada", "last": "Test"},
                "dateOfBirth": "1990-12-10",
                "address": {
                    "street": "1 Main St",
                    "city": "Austin",
                    "state": "TX",
                    "postalCode": "78701",
                    "country": "US",
                },
                "phone": {"countryCode": "1", "number": "5555550199"},
                "email": "ada@example.com",
                "jwtSubject": "ada|sandbox",
            },
        }
    }
    created = box.org("POST", "/applications", application)
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["attributes"]["ssn"] == "900551234"
    assert data["attributes"]["dateOfBirth"] == "1990-12-10"
    assert data["attributes"]["status"] == "Approved"
    customer_id = data["relationships"]["customer"]["data"]["id"]
    assert box.org("GET", f"/applications/{data['id']}").json()["data"] == data
    customer = box.org("GET", f"/customers/{customer_id}").json()["data"]
    assert customer["attributes"]["jwtSubject"] == "ada|sandbox"
    assert box.plain_customer_token(customer_id, "customers")

    del application["data"]["attributes"]["ssn"]
    assert error_of(box.org("POST", "/applications", application), 400)
    application["data"]["attributes"].update(passport="X1234567", nationality="FR")
    assert box.org("POST", "/applications", application).status_code == 201
    application["data"]["attributes"]["dateOfBirth"] = "1990-13-45"
    assert error_of(box.org("POST", "/applications", application), 400)["source"]["pointer"] == (
        "/data/attributes/dateOfBirth"
    )


def test_lists_paginate(box: SandboxProcess) -> None:
    first = box.org("GET", "/customers?page[limit]=2&page[offset]=0").json()
    second = box.org("GET", "/customers?page[limit]=2&page[offset]=2").json()
    assert len(first["data"]) == 2 and first["meta"]["pagination"]["limit"] == 2
    assert not {c["id"] for c in first["data"]} & {c["id"] for c in second["data"]}
    assert first["meta"]["pagination"]["total"] >= 5
    oldest = box.org("GET", "/customers?sort=createdAt&page[limit]=1").json()["data"]
    assert oldest[0]["id"] == "10001"
    assert error_of(box.org("GET", "/customers?page[limit]=0"), 400)
    assert error_of(box.org("GET", "/customers?page[limit]=x"), 400)
    filtered = box.org("GET", "/cards?filter[accountId]=20005").json()["data"]
    assert sorted(c["id"] for c in filtered) == ["30005", "30006"]


def test_oversized_body_is_a_json_api_413(box: SandboxProcess) -> None:
    response = box.request(
        "POST",
        "/applications",
        box.org_token,
        data=b"{" + b" " * 2_000_000 + b"}",
        headers={"Content-Type": jsonapi.MEDIA_TYPE},
    )
    assert error_of(response, 413)["code"] == "request_too_large"
    # The control path reads its bodies the same way.
    faults = box.request("POST", "/__sandbox/faults", data=b"{" + b" " * 2_000_000 + b"}")
    assert error_of(faults, 413)["code"] == "request_too_large"


def test_open_an_account_for_a_new_customer_and_issue_a_card(box: SandboxProcess) -> None:
    application = {
        "data": {
            "type": "individualApplication",
            "attributes": {
                "fullName": {"first": "Ada", "last": "Test"},
                "dateOfBirth": "1990-01-02",
                "address": {
                    "street": "3 Main St",
                    "city": "Austin",
                    "state": "TX",
                    "postalCode": "78701",
                    "country": "US",
                },
                "phone": {"countryCode": "1", "number": "5555550160"},
                "email": "ada@example.com",
                "ssn": "900771234",
            },
        }
    }
    created = box.org("POST", "/applications", application)
    assert created.status_code == 201, created.text
    customer_id = created.json()["data"]["relationships"]["customer"]["data"]["id"]
    account_request = {
        "data": {
            "type": "depositAccount",
            "attributes": {"depositProduct": "checking", "idempotencyKey": "acct-1"},
            "relationships": {"customer": {"data": {"type": "customer", "id": customer_id}}},
        }
    }
    opened = box.org("POST", "/accounts", account_request)
    assert opened.status_code == 201, opened.text
    account = opened.json()["data"]
    assert account["type"] == "depositAccount"
    assert account["attributes"]["balance"] == 0
    assert account["attributes"]["name"] == "Ada Test Checking"
    assert account["relationships"]["customer"]["data"]["id"] == customer_id
    assert box.org("POST", "/accounts", account_request).json()["data"]["id"] == account["id"]
    assert box.org("GET", f"/accounts/{account['id']}").ok

    card = box.org(
        "POST",
        "/cards",
        {
            "data": {
                "type": "individualVirtualDebitCard",
                "attributes": {},
                "relationships": {
                    "account": {"data": {"type": "depositAccount", "id": account["id"]}}
                },
            }
        },
    )
    assert card.status_code == 201, card.text
    assert card.json()["data"]["relationships"]["customer"]["data"]["id"] == customer_id

    bad_product = json.loads(json.dumps(account_request))
    bad_product["data"]["attributes"] = {"depositProduct": "gold"}
    assert error_of(box.org("POST", "/accounts", bad_product), 400)
    unknown = json.loads(json.dumps(account_request))
    unknown["data"]["attributes"] = {"depositProduct": "savings"}
    unknown["data"]["relationships"]["customer"]["data"]["id"] = "99999"
    assert error_of(box.org("POST", "/accounts", unknown), 400)
    # A refused request takes no id: the next account follows the last one.
    bad_tags = json.loads(json.dumps(account_request))
    bad_tags["data"]["attributes"] = {"depositProduct": "savings", "tags": ["not", "a", "map"]}
    assert error_of(box.org("POST", "/accounts", bad_tags), 400)
    fresh = json.loads(json.dumps(account_request))
    fresh["data"]["attributes"] = {"depositProduct": "savings"}
    following = box.org("POST", "/accounts", fresh).json()["data"]["id"]
    assert int(following) == int(account["id"]) + 1
    jane = box.customer_token_2fa("10001", "accounts accounts-write")
    assert error_of(box.request("POST", "/accounts", jane, account_request), 403)
