"""Token injection end to end: a real gateway process in front of the sandbox, Unit's Python
SDK as the client, placeholders as its only credentials. Every test ends with the leak scan
of the gateway fixture."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from unit.models.customerToken import CreateCustomerToken

from conftest import (
    GatewayFactory,
    Planted,
    clear_proxy_settings,
    jwt_settings,
    planted_sandbox,
    proxied_session,
    sdk,
    take_down,
    wait_until,
    wait_until_unit_answered_all,
)
from unit_gateway.testing import harness

CUSTOMER = "10001"  # an individual customer of the sandbox's seed data, jwtSubject user|10001
OTHER_CUSTOMER = "10002"


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    clear_proxy_settings(monkeypatch)  # sdk() sets the gateway's
    yield


def get(
    session: requests.Session, sandbox: harness.Sandbox, path: str, token: str
) -> requests.Response:
    return session.get(sandbox.url + path, headers={"Authorization": f"Bearer {token}"})


def customer_two_factor(strategy: str) -> dict[str, Any]:
    """Gateway overrides: the customer's two-factor strategy."""
    return {"tokens": {"customer": {"two_factor": strategy}}}


def challenge_of(answer: requests.Response) -> str:
    """The challenge id of the gateway's ``verification_required`` answer."""
    assert answer.status_code == 401, answer.text
    error = answer.json()["errors"][0]
    assert error["code"] == "verification_required"
    return error["meta"]["challengeId"]


def complete_challenge(
    session: requests.Session, sandbox: harness.Sandbox, challenge_id: str, code: str
) -> requests.Response:
    """The customer's create-token request completing ``challenge_id`` with ``code``."""
    body = {
        "data": {
            "type": "customerToken",
            "attributes": {
                "scope": "customers accounts cards cards-sensitive",
                "verificationToken": challenge_id,
                "verificationCode": code,
            },
        }
    }
    return session.post(
        f"{sandbox.url}/customers/{CUSTOMER}/token",
        json=body,
        headers={"Authorization": "Bearer unitgw:org"},
    )


def first_card(session: requests.Session, sandbox: harness.Sandbox) -> str:
    """The id of the customer's first card, read through the gateway with the placeholder."""
    cards = get(session, sandbox, "/cards", f"unitgw:customer:{CUSTOMER}")
    return cards.json()["data"][0]["id"]


def created(sandbox: harness.Sandbox) -> tuple[int, int, int, int]:
    stats = sandbox.stats()
    return (
        stats["tokens_created"]["customer"],
        stats["tokens_created"]["cardholder"],
        stats["verifications_created"]["customer"],
        stats["verifications_created"]["cardholder"],
    )


def assert_no_unit_token(*responses: requests.Response) -> None:
    for response in responses:
        assert b"v2.public." not in response.content
        assert "v2.public." not in str(response.headers)


def test_each_identity_kind_gets_a_real_token(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    sdk_env: None,
) -> None:
    gateway = gateway_factory(sandbox)
    org = sdk(gateway, sandbox, "unitgw:org", monkeypatch)
    all_cards = org.cards.list().data
    assert len({c.relationships["customer"].id for c in all_cards}) > 1

    customer = sdk(gateway, sandbox, f"unitgw:customer:{CUSTOMER}", monkeypatch)
    mine = customer.cards.list().data
    # A customer token sees only its own cards: the sandbox got a customer token.
    assert mine and all(c.relationships["customer"].id == CUSTOMER for c in mine)

    card_id = mine[0].id
    cardholder = sdk(gateway, sandbox, f"unitgw:cardholder:{card_id}", monkeypatch)
    assert cardholder.cards.get(card_id).data.id == card_id
    assert created(sandbox) == (1, 1, 0, 0)
    assert sandbox.stats()["unauthenticated"] == {}

    with proxied_session(gateway) as session:
        other = next(c.id for c in all_cards if c.relationships["customer"].id != CUSTOMER)
        refused = get(session, sandbox, f"/cards/{other}", f"unitgw:customer:{CUSTOMER}")
        assert refused.status_code == 403  # Unit's own answer to a customer token
        wrong_card = get(session, sandbox, f"/cards/{other}", f"unitgw:cardholder:{card_id}")
        assert wrong_card.status_code == 403
        assert wrong_card.json()["errors"][0]["code"] == "cardholder_route_refused"
        assert_no_unit_token(refused, wrong_card)


def test_reuse_and_expiry(gateway_factory: GatewayFactory, sandbox: harness.Sandbox) -> None:
    gateway = gateway_factory(
        sandbox,
        overrides={
            "tokens": {
                "expiry_margin_seconds": 1,
                "refresh_ahead_seconds": 0,
                "customer": {"expires_in": 3, "default_scopes": ["customers", "accounts", "cards"]},
            }
        },
    )
    placeholder = f"unitgw:customer:{CUSTOMER}"
    with proxied_session(gateway) as session:
        responses = [
            get(session, sandbox, path, placeholder)
            for path in ("/cards", "/accounts", f"/customers/{CUSTOMER}")
        ]
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert created(sandbox)[0] == 1, "one token serves every route its scopes cover"
        time.sleep(2.2)  # past the usable lifetime (3 s less the 1 s margin)
        again = get(session, sandbox, "/cards", placeholder)
        assert again.status_code == 200
        assert created(sandbox)[0] == 2, "an expired token is replaced"
        assert_no_unit_token(*responses, again)


def test_refresh_ahead_in_background(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(
        sandbox,
        overrides={
            "tokens": {
                "expiry_margin_seconds": 1,
                "refresh_ahead_seconds": 3,
                "customer": {"expires_in": 6, "default_scopes": ["cards"]},
            }
        },
    )
    placeholder = f"unitgw:customer:{CUSTOMER}"
    with proxied_session(gateway) as session:
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
        assert created(sandbox)[0] == 1
        time.sleep(2.7)  # inside the refresh window (after 5 - 3 = 2 s), token still valid
        started = time.monotonic()
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
        assert time.monotonic() - started < 1.0
        wait_until(lambda: created(sandbox)[0] >= 2, 5, interval=0.05)
        assert created(sandbox)[0] == 2, "a replacement was minted in the background"
        assert get(session, sandbox, "/cards", placeholder).status_code == 200
        assert created(sandbox)[0] == 2, "the refreshed token is used"


def test_learned_token_is_reused(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    sdk_env: None,
) -> None:
    gateway = gateway_factory(sandbox)
    # A caller with its own credentials creates a customer token through the gateway.
    own = sdk(gateway, sandbox, sandbox.org_token, monkeypatch)
    response = own.customerTokens.create_token(
        CreateCustomerToken(CUSTOMER, "customers accounts cards", expires_in=600)
    )
    assert response.data.attributes["token"].startswith("v2.public."), (
        "its own credentials: the real token"
    )
    assert created(sandbox)[0] == 1
    with proxied_session(gateway) as session:
        assert get(session, sandbox, "/cards", f"unitgw:customer:{CUSTOMER}").status_code == 200
    assert created(sandbox)[0] == 1, "the learned token served the placeholder"


def test_a_token_restricted_to_resources_is_not_learned(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox)
    restricted = {
        "data": {
            "type": "customerToken",
            "attributes": {
                "scope": "customers accounts cards",
                "resources": [{"type": "account", "ids": ["20001"]}],
            },
        }
    }
    path = f"/customers/{CUSTOMER}/token"
    with proxied_session(gateway) as session:
        # With its own org token a caller gets the real, restricted token; the placeholder
        # must not be served with it afterwards (it would be refused every other account).
        own = session.post(
            sandbox.url + path,
            json=restricted,
            headers={"Authorization": f"Bearer {sandbox.org_token}"},
        )
        assert own.status_code == 201, own.text
        assert created(sandbox)[0] == 1
        other_account = get(session, sandbox, "/accounts/20002", f"unitgw:customer:{CUSTOMER}")
        assert other_account.status_code == 200, other_account.text
        assert created(sandbox)[0] == 2, "a token of the gateway's own, not the restricted one"

        # With a placeholder the caller would get the placeholder back, which names the
        # whole customer: refused before Unit is called.
        refused = session.post(
            sandbox.url + path, json=restricted, headers={"Authorization": "Bearer unitgw:org"}
        )
        assert refused.status_code == 400
        error = refused.json()["errors"][0]
        assert error["code"] == "resources_not_supported"
        assert error["meta"]["pointer"] == "/data/attributes/resources"
    # The caller's own request and the gateway's mint; the refused one never arrived.
    assert created(sandbox)[0] == 2
    assert sandbox.stats()["requests"]["POST /customers/{customerId}/token"] == 2


def test_sandbox_otp_two_factor(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(sandbox, overrides=customer_two_factor("sandbox-otp"))
    with proxied_session(gateway) as session:
        card = first_card(session, sandbox)
        pan = get(session, sandbox, f"/cards/{card}/secure-data/pan", f"unitgw:customer:{CUSTOMER}")
        assert pan.status_code == 200, pan.text
        planted.add("PAN", pan.json()["data"]["attributes"]["pan"])
        assert created(sandbox)[:3] == (2, 0, 1)
        assert_no_unit_token(pan)


def test_jwt_two_factor(
    gateway_factory: GatewayFactory, jwt_sandbox: harness.Sandbox, run_dir: Path
) -> None:
    box = jwt_sandbox
    gateway = gateway_factory(
        box,
        overrides={"tokens": {"customer": {"two_factor": "jwt"}, "jwt": jwt_settings(run_dir)}},
    )
    with proxied_session(gateway) as session:
        cards = get(session, box, "/cards", f"unitgw:customer:{CUSTOMER}").json()["data"]
        pan = get(
            session,
            box,
            f"/cards/{cards[0]['id']}/secure-data/pan",
            f"unitgw:customer:{CUSTOMER}",
        )
        assert pan.status_code == 200, pan.text
    stats = box.stats()
    assert stats["jwt_tokens_accepted"] == 1
    assert stats["verifications_created"]["customer"] == 0


def test_challenge_completed_by_the_caller(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    monkeypatch: pytest.MonkeyPatch,
    sdk_env: None,
) -> None:
    gateway = gateway_factory(sandbox, overrides=customer_two_factor("challenge"))
    placeholder = f"unitgw:customer:{CUSTOMER}"
    with proxied_session(gateway) as session:
        card = first_card(session, sandbox)
        first = get(session, sandbox, f"/cards/{card}/secure-data/pan", placeholder)
        challenge_id = challenge_of(first)
        assert sandbox.stats()["verifications_created"]["customer"] == 1

        # The caller completes it with Unit's own create-token request, through the gateway.
        org = sdk(gateway, sandbox, "unitgw:org", monkeypatch)
        answer = org.customerTokens.create_token(
            CreateCustomerToken(
                CUSTOMER,
                "customers accounts cards cards-sensitive",
                verification_token=challenge_id,
                verification_code="000001",
            )
        )
        assert answer.data.attributes["token"] == placeholder, (
            "the caller gets the placeholder, not the token"
        )
        tokens_after_challenge = created(sandbox)[0]

        pan = get(session, sandbox, f"/cards/{card}/secure-data/pan", placeholder)
        assert pan.status_code == 200, pan.text
        assert created(sandbox)[0] == tokens_after_challenge, "the completed token is cached"

        reused = org.customerTokens.create_token(
            CreateCustomerToken(
                CUSTOMER,
                "cards-sensitive",
                verification_token=challenge_id,
                verification_code="000001",
            )
        )
        assert reused.errors[0].code == "unknown_challenge"
        assert_no_unit_token(first, pan)


def test_sixth_verification_is_refused_locally(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox, overrides=customer_two_factor("sandbox-otp"))
    placeholder = f"unitgw:customer:{CUSTOMER}"
    with proxied_session(gateway) as session:
        card = first_card(session, sandbox)
        # Unit refuses every user token: each request verifies and mints, is refused, and
        # verifies and mints once more for its one retry.
        sandbox.faults(reject_user_tokens=True)
        answers = [
            get(session, sandbox, f"/cards/{card}/secure-data/pan", placeholder) for _ in range(3)
        ]
        sandbox.faults(reject_user_tokens=False)
    assert [a.status_code for a in answers] == [401, 401, 429]
    assert answers[2].json()["errors"][0]["code"] == "verification_limit"
    retry_after = int(answers[2].headers["Retry-After"])
    assert 500 < retry_after <= 600
    assert sandbox.stats()["verifications_created"]["customer"] == 5, "Unit never saw the sixth"


def test_an_open_challenge_is_handed_out_again_and_outlives_a_wrong_code(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox, overrides=customer_two_factor("challenge"))
    placeholder = f"unitgw:customer:{CUSTOMER}"

    def complete(challenge_id: str, code: str) -> requests.Response:
        return complete_challenge(session, sandbox, challenge_id, code)

    def code_of(answer: requests.Response) -> str:
        return answer.json()["errors"][0]["code"]

    with proxied_session(gateway) as session:
        pan_path = f"/cards/{first_card(session, sandbox)}/secure-data/pan"
        # A client retrying before the person has typed the code: one code is sent, not six
        # (which would have used up Unit's 5 verifications in 10 minutes).
        ids = {challenge_of(get(session, sandbox, pan_path, placeholder)) for _ in range(6)}
        assert len(ids) == 1
        assert sandbox.stats()["verifications_created"]["customer"] == 1
        (first,) = ids
        # Wrong codes are Unit's own errors, and the challenge stays open, for 5 codes in all.
        for _ in range(5):
            mistyped = complete(first, "000002")
            assert 400 <= mistyped.status_code < 500 and code_of(mistyped) != "unknown_challenge"
        assert code_of(complete(first, "000001")) == "unknown_challenge"

        # A new challenge (a second code sent): a wrong code, then the right one.
        second = challenge_of(get(session, sandbox, pan_path, placeholder))
        assert second != first
        assert code_of(complete(second, "000002")) != "unknown_challenge"
        corrected = complete(second, "000001")
        assert corrected.status_code in (200, 201), corrected.text
        assert corrected.json()["data"]["attributes"]["token"] == placeholder
        assert get(session, sandbox, pan_path, placeholder).status_code == 200
        # Used: the same id again is unknown.
        assert code_of(complete(second, "000001")) == "unknown_challenge"
    assert sandbox.stats()["verifications_created"]["customer"] == 2


async def _stampede(gateway: harness.Gateway, url: str, token: str, count: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def one() -> int:
            async with session.get(
                url, proxy=gateway.proxy_url, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.parametrize("two_factor", [False, True], ids=["plain", "two-factor"])
def test_500_concurrent_requests_mint_once(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, two_factor: bool
) -> None:
    gateway = gateway_factory(sandbox, overrides=customer_two_factor("sandbox-otp"))
    path = "/cards/30001/secure-data/pan" if two_factor else "/cards"
    statuses = asyncio.run(
        _stampede(gateway, sandbox.url + path, f"unitgw:customer:{CUSTOMER}", 500)
    )
    assert statuses == [200] * 500
    assert created(sandbox)[0] == 1
    assert created(sandbox)[2] == (1 if two_factor else 0)


def test_token_endpoint_outage_and_timeout(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox, overrides={"unit": {"token_timeout_seconds": 1}})
    with proxied_session(gateway) as session:
        sandbox.faults(token_outage=True)
        outage = get(session, sandbox, "/cards", f"unitgw:customer:{CUSTOMER}")
        assert outage.status_code == 503
        error = outage.json()["errors"][0]
        assert error["code"] == "token_endpoint_failed"
        assert "creating a customer token for unitgw:customer:10001" in error["detail"]

        sandbox.faults(token_outage=False, latency_ms=1500)
        timeout = get(session, sandbox, "/cards", f"unitgw:customer:{OTHER_CUSTOMER}")
        assert timeout.status_code == 504
        assert timeout.json()["errors"][0]["code"] == "token_endpoint_timeout"
        sandbox.faults(latency_ms=0)
    wait_until_unit_answered_all(sandbox)  # the late mint: its token is planted at teardown
    stats = sandbox.stats()
    assert "GET /cards" not in stats["requests"], "nothing was forwarded without its token"
    assert stats["unauthenticated"] == {}
    # What the TokenMintFailures alert sends the operator to: one log line per failed mint.
    output = gateway.process.output()
    failed = re.findall(r"unit-gateway: customer token call failed \((\w+)\): (.*)", output)
    assert [code for code, _ in failed] == ["token_endpoint_failed", "token_endpoint_timeout"]
    assert failed[0][1].startswith("creating a customer token for unitgw:customer:10001: ")


def test_upstream_401_evicts_and_retries_once(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox)
    placeholder = f"unitgw:customer:{CUSTOMER}"
    with proxied_session(gateway) as session:
        assert get(session, sandbox, "/accounts", placeholder).status_code == 200
        # Unit's clock moves past the cached token's expiry: Unit answers 401 to it.
        sandbox.admin("POST", "/__sandbox/clock", {"advance_seconds": 7200})
        retried = get(session, sandbox, "/accounts", placeholder)
        assert retried.status_code == 200, retried.text
        assert_no_unit_token(retried)
    stats = sandbox.stats()
    assert stats["tokens_created"]["customer"] == 2
    assert stats["requests"]["GET /accounts"] == 3
    assert stats["responses"]["401"] == 1


def test_refusals(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    gateway = gateway_factory(sandbox)
    with (
        planted_sandbox(run_dir, planted, "org token (not Unit)", name="not-unit") as other_host,
        proxied_session(gateway) as session,
    ):
        missing = session.get(sandbox.url + "/cards")
        assert missing.status_code == 401
        assert missing.json()["errors"][0]["code"] == "missing_authorization"
        org_only = get(session, sandbox, "/webhooks", f"unitgw:customer:{CUSTOMER}")
        assert org_only.status_code == 403
        assert org_only.json()["errors"][0]["code"] == "org_only_route"
        assert sandbox.stats()["total_requests"] == 0, "no mint, nothing forwarded"
        bad = get(session, sandbox, "/cards", "unitgw:customer:")
        assert bad.status_code == 401
        assert bad.json()["errors"][0]["code"] == "invalid_placeholder"
        elsewhere = get(session, other_host, "/cards", "unitgw:org")
        assert elsewhere.status_code == 403
        assert elsewhere.json()["errors"][0]["code"] == "placeholder_for_unknown_host"
        assert other_host.stats()["total_requests"] == 0, "never forwarded"
        passthrough = get(session, other_host, "/cards", other_host.org_token)
        assert passthrough.status_code == 200


def test_missing_authorization_may_use_the_org_token(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox, overrides={"unit": {"missing_authorization": "org"}})
    with proxied_session(gateway) as session:
        response = session.get(sandbox.url + "/customers")
    assert response.status_code == 200
    assert_no_unit_token(response)


def test_second_upstream_401_goes_back_to_the_caller(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox
) -> None:
    gateway = gateway_factory(sandbox)
    placeholder = f"unitgw:customer:{CUSTOMER}"
    with proxied_session(gateway) as session:
        assert get(session, sandbox, "/accounts", placeholder).status_code == 200
        sandbox.faults(reject_user_tokens=True)
        refused = get(session, sandbox, "/accounts", placeholder)
        sandbox.faults(reject_user_tokens=False)
        assert refused.status_code == 401
        assert refused.json()["errors"][0]["code"] == "token_revoked"
        assert_no_unit_token(refused)
        # The next request gets a fresh token again and goes through.
        assert get(session, sandbox, "/accounts", placeholder).status_code == 200
    stats = sandbox.stats()
    assert stats["requests"]["GET /accounts"] == 4, "one try and exactly one retry"
    assert stats["tokens_created"]["customer"] == 3


def test_unit_outage_is_a_json_api_error(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(sandbox)
    with proxied_session(gateway) as session:
        assert get(session, sandbox, "/customers", "unitgw:org").status_code == 200
        take_down(sandbox, planted)  # Unit goes away
        down = get(session, sandbox, "/customers", "unitgw:org")
        # Another host that is down gets the same kind of answer, not blamed on Unit.
        elsewhere = f"127.0.0.1:{harness.free_port()}"
        other = session.get(f"http://{elsewhere}/status")
    assert other.status_code == 502
    assert other.headers["Content-Type"] == "application/vnd.api+json"
    other_error = other.json()["errors"][0]
    assert other_error["code"] == "upstream_unreachable"
    assert other_error["detail"].startswith(elsewhere) and "(Unit)" not in other_error["detail"]
    assert down.status_code == 502
    assert down.headers["Content-Type"] == "application/vnd.api+json"
    error = down.json()["errors"][0]
    assert error["code"] == "upstream_unreachable"
    assert sandbox.url.removeprefix("http://") in error["detail"]
    assert_no_unit_token(down)
