"""The pieces of token handling that need no proxy: placeholders, the cache, single-flight,
the verification limiter."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from unit_gateway.tokens.cache import TokenCache, scopes_of, usable_lifetime
from unit_gateway.tokens.client import _upstream_refusal
from unit_gateway.tokens.single_flight import SingleFlight
from unit_gateway.tokens.two_factor import VerificationLimiter
from unit_gateway.unit_api import paseto
from unit_gateway.unit_api.identity import (
    ORG,
    AmbiguousAuthorization,
    Identity,
    PlaceholderError,
    RealToken,
    check_authorization_fields,
    parse_authorization,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer unitgw:org", ORG),
        ("bearer unitgw:customer:10001", Identity("customer", "10001")),
        ("Bearer  unitgw:cardholder:30001 ", Identity("cardholder", "30001")),
        # Optional white space is spaces or tabs, anywhere a server allows it.
        ("Bearer\tunitgw:org", ORG),
        ("\t BEARER \t unitgw:customer:10001\t", Identity("customer", "10001")),
        ("bEaReR unitgw:org", ORG),
        ("Bearer\tv2.public.abc", RealToken("v2.public.abc")),
        ("Bearer v2.public.abc", RealToken("v2.public.abc")),
        ("Basic dXNlcjpwYXNz", RealToken("Basic dXNlcjpwYXNz")),
        (None, None),
        ("", None),
        ("Bearer", None),
    ],
)
def test_parse_authorization(header: str | None, expected: object) -> None:
    assert parse_authorization(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "Bearer unitgw:customer:",
        "Bearer unitgw:customer:a/b",
        "Bearer unitgw:org:1",
        "Bearer unitgw:admin:1",
        "Bearer unitgw:cardholder:" + "9" * 65,
        # Any spelling of a placeholder is one: never a "real token" sent to any host.
        "Bearer UNITGW:ORG",
        "Bearer Unitgw:org",
        "Bearer unitgw:ORG",
        "Bearer x, Bearer unitgw:org",
        "Bearer unitgw:org, Bearer x",
        "Bearer unitgw:org x",
        "Basic unitgw:org",
        "unitgw:org",
        "Token token=unitgw:org",
        "Bearer\u00a0unitgw:org",
    ],
)
def test_malformed_placeholders(header: str) -> None:
    with pytest.raises(PlaceholderError):
        parse_authorization(header)


@pytest.mark.parametrize(
    "header",
    ["Bearer\r\n unitgw:org", "Bearer unitgw:org\r\n", "Bearer\x00unitgw:org", "Bearer x\x7f"],
)
def test_folded_or_control_characters_are_ambiguous(header: str) -> None:
    with pytest.raises(AmbiguousAuthorization):
        parse_authorization(header)


@pytest.mark.parametrize(
    ("names", "ambiguous"),
    [
        ([b"Host", b"Authorization"], False),
        ([b"Host"], False),
        ([b"authorization", b"Proxy-Authorization", b"X-Authorization-Id"], False),
        ([b"Authorization", b"authorization"], True),
        ([b"AUTHORIZATION", b"Host", b"Authorization"], True),
        ([b"Authorization "], True),
        ([b"Authorization\t"], True),
        ([b"Host", b" authorization"], True),
    ],
)
def test_authorization_fields(names: list[bytes], ambiguous: bool) -> None:
    if ambiguous:
        with pytest.raises(AmbiguousAuthorization):
            check_authorization_fields(names)
    else:
        check_authorization_fields(names)


def test_placeholder_round_trip() -> None:
    assert Identity("customer", "7").placeholder == "unitgw:customer:7"
    assert ORG.placeholder == "unitgw:org"


def unit_token(scope: str, expires_in: float) -> str:
    expiry = datetime.now(UTC) + timedelta(seconds=expires_in)
    return paseto.encode({"scope": scope, "exp": paseto.format_time(expiry)}, b"k" * 32)


def test_lifetime_is_the_shorter_of_expires_in_and_exp_claim() -> None:
    assert usable_lifetime(unit_token("cards", 100), 3600) == pytest.approx(100, abs=2)
    assert usable_lifetime(unit_token("cards", 3600), 60) == 60
    assert usable_lifetime("not-a-paseto", 60) == 60
    assert scopes_of(unit_token("cards accounts", 60)) == {"cards", "accounts"}


def test_cache_reuses_a_token_whose_scopes_cover_the_route() -> None:
    clock = FakeClock()
    cache = TokenCache(100, margin=10, refresh_ahead=30, timer=clock)
    alice = Identity("customer", "1")
    wide = cache.make(alice, frozenset({"cards", "accounts"}), "tok-wide", 100)
    cache.put(wide)
    assert cache.get(alice, frozenset({"cards"})) is wide
    assert cache.get(alice, frozenset()) is wide
    assert cache.get(alice, frozenset({"payments"})) is None
    assert cache.get(Identity("customer", "2"), frozenset({"cards"})) is None
    clock.now += 89  # the margin of 10 s makes it unusable after 90 s
    assert cache.get(alice, frozenset({"cards"})) is wide
    clock.now += 2
    assert cache.get(alice, frozenset({"cards"})) is None
    assert len(cache) == 0


def test_cache_prefers_the_longest_lived_cover_and_evicts() -> None:
    clock = FakeClock()
    cache = TokenCache(100, margin=0, timer=clock)
    bob = Identity("customer", "2")
    short = cache.make(bob, frozenset({"cards"}), "short", 50)
    long = cache.make(bob, frozenset({"cards", "accounts"}), "long", 500)
    cache.put(short)
    cache.put(long)
    assert cache.get(bob, frozenset({"cards"})) is long
    cache.evict(long)
    assert cache.get(bob, frozenset({"cards"})) is short
    assert cache.count_by_kind() == {"customer": 1}


def test_cache_is_bounded_and_token_repr_hides_value() -> None:
    cache = TokenCache(3, margin=0)
    for i in range(10):
        cache.put(cache.make(Identity("customer", str(i)), frozenset({"cards"}), f"secret-{i}", 60))
    assert len(cache) == 3
    token = cache.make(ORG, frozenset(), "secret-value", 60)
    assert "secret-value" not in repr(token)


def test_refresh_point_is_never_immediately() -> None:
    clock = FakeClock()
    cache = TokenCache(10, margin=1, refresh_ahead=300, timer=clock)
    token = cache.make(ORG, frozenset(), "t", 11)
    # Refresh-ahead longer than the lifetime: refresh at half-life, not at once.
    assert token.refresh_at == pytest.approx(clock.now + 5)


def test_verification_limiter_refuses_the_sixth_in_ten_minutes() -> None:
    clock = FakeClock()
    limiter = VerificationLimiter(timer=clock)
    carol = Identity("customer", "3")
    for _ in range(5):
        assert limiter.acquire(carol) is None
        clock.now += 10
    assert limiter.acquire(carol) == pytest.approx(550)
    assert limiter.acquire(Identity("cardholder", "3")) is None, "limits are per customer/card"
    clock.now += 551
    assert limiter.acquire(carol) is None


async def test_single_flight_runs_once_and_survives_a_cancelled_caller() -> None:
    flights = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "done"

    waiters = [asyncio.ensure_future(flights.run("k", work)) for _ in range(50)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    release.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == ["done"] * 49
    assert calls == 1
    assert len(flights) == 0


async def test_single_flight_shares_a_failure() -> None:
    flights = SingleFlight()

    async def fail() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    results = await asyncio.gather(
        *(flights.run("k", fail) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


def test_unit_quoting_a_secret_the_call_sent_does_not_hand_it_to_the_caller() -> None:
    sent = {
        "scope": "cards",
        "verificationToken": "vt-0123456789abcdef",
        "verificationCode": "000001",
    }
    unit_says = {
        "errors": [
            {
                "status": "400",
                "title": "Bad Request",
                "detail": "verificationToken vt-0123456789abcdef with code 000001 is expired",
            }
        ]
    }
    error = _upstream_refusal(
        "creating a customer token", 400, json.dumps(unit_says).encode(), sent
    )
    assert (error.status, error.code) == (502, "token_refused")
    assert error.detail == (
        "creating a customer token: Unit answered 400: verificationToken "
        "[redacted:verificationToken] with code [redacted:verificationCode] is expired"
    )


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("7", {"Retry-After": "7"}),
        # An HTTP date (here one already past) is passed on as seconds from now.
        ("Wed, 21 Oct 2015 07:28:00 GMT", {"Retry-After": "0"}),
        ("soon", {}),
        (None, {}),
    ],
)
def test_unit_rate_limiting_a_token_call_passes_its_retry_after_on(
    sent: str | None, kept: dict[str, str]
) -> None:
    unit_says = {"errors": [{"status": "429", "title": "Too Many Requests"}]}
    error = _upstream_refusal(
        "creating a customer token", 429, json.dumps(unit_says).encode(), {}, sent
    )
    assert (error.status, error.code, error.headers) == (429, "token_endpoint_rate_limited", kept)
