"""The route table: every Unit route matches, literals beat parameters, scopes and flags are
what Unit documents, and the configuration can add and override routes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from unit_gateway.sandbox.scopes import ALL_SCOPES
from unit_gateway.unit_api import route_data, routes, templates
from unit_gateway.unit_api.route_settings import RouteRule, RouteSettings
from unit_gateway.unit_api.routes import (
    OTHER_ROUTE,
    Route,
    RouteMatch,
    RouteTable,
    route_label,
)
from unit_gateway.unit_api.targets import UnreadableTarget, read_target
from unit_gateway.unit_api.templates import canonical_spelling

DATA_DIR = Path(routes.__file__).parent / "data"
SHARED_ROUTES = Path("/work/shared/data/unit-routes.txt")

TABLE = RouteTable.default()
SPELLINGS = route_data.parse_route_list((DATA_DIR / "unit-routes.txt").read_text())
LITERALS = frozenset(
    segment for route in TABLE.routes() for segment in route.shape if segment != "{}"
)


def sample_path(template: str, ids: list[str] | None = None) -> str:
    """The template with each parameter replaced by a sample id (``id0``, ``id1``, ...)."""
    out, n = [], 0
    for segment in template[1:].split("/"):
        if segment.startswith("{"):
            out.append(ids[n] if ids is not None else f"id{n}")
            n += 1
        else:
            out.append(segment)
    return "/" + "/".join(out)


def match(method: str, path: str, table: RouteTable = TABLE) -> RouteMatch:
    found = table.match(method, path)
    assert found is not None, f"{method} {path} matched nothing"
    return found


# ------------------------------------------------------------------------------------------
# The data


def test_route_list_has_every_spelling_and_template() -> None:
    assert len(SPELLINGS) == 181
    # unit-api.md says 163 templates; the list holds 164 distinct shapes because
    # unit-openapi-python-sdk's `/application/{id}/documents/{id}/verify` (singular) is a
    # different path on the wire from `/applications/...` and needs its own route.
    assert len(TABLE.routes()) == 164
    assert len(set(TABLE.templates())) == 164
    assert "/application/{applicationId}/documents/{documentId}/verify" in TABLE.templates()


@pytest.mark.skipif(not SHARED_ROUTES.exists(), reason="shared route list not available")
def test_packaged_route_list_is_the_shared_one() -> None:
    assert (DATA_DIR / "unit-routes.txt").read_text() == SHARED_ROUTES.read_text()


@pytest.mark.parametrize(("methods", "spelling"), [(sorted(m), t) for m, t in SPELLINGS])
def test_every_spelling_matches_its_route_with_sample_ids(
    methods: list[str], spelling: str
) -> None:
    route = TABLE.route(spelling)
    assert route is not None
    found = match(methods[0], sample_path(spelling))
    assert found.template == route.template
    assert spelling in route.spellings
    assert set(methods) <= route.methods
    # Parameters come back under the canonical names, in path order.
    names = templates.parse_template(route.template)[1]
    assert found.params == {name: f"id{i}" for i, name in enumerate(names)}
    for method in methods:
        assert match(method, sample_path(spelling)).method_allowed


def test_methods_of_all_spellings_are_merged() -> None:
    route = TABLE.route("/recurring-payments/{id}")
    assert route is not None
    assert route.template == "/recurring-payments/{paymentId}"
    assert route.methods == {"GET", "DELETE"}  # DELETE came from the {id} spelling


# ------------------------------------------------------------------------------------------
# Canonical spelling


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("/applications/{id}", "/applications/{applicationId}"),
        ("/applications/{id}/cancel", "/applications/{applicationId}/cancel"),
        ("/received-payments/{id}", "/received-payments/{paymentId}"),
        (
            "/recurring-repayments/{id}/enable",
            "/recurring-repayments/{recurringRepaymentId}/enable",
        ),
        ("/statements/{id}/pdf", "/statements/{statementId}/pdf"),
        ("/tax-forms/{id}", "/tax-forms/{taxFormId}"),
        ("/beneficial-owner/{id}", "/beneficial-owner/{beneficialOwnerId}"),
        # Only ever spelled {id}: stays {id}.
        ("/card-fraud-cases/{id}", "/card-fraud-cases/{id}"),
    ],
)
def test_canonical_spelling_prefers_descriptive_names(spelling: str, canonical: str) -> None:
    route = TABLE.route(spelling)
    assert route is not None and route.template == canonical


def test_canonical_spelling_does_not_depend_on_order() -> None:
    spellings = ["/x/{id}/y/{yId}", "/x/{xId}/y/{id}", "/x/{id}/y/{id2}"]
    assert canonical_spelling(spellings) == canonical_spelling(reversed(spellings))
    assert canonical_spelling(spellings) == "/x/{id}/y/{id2}"  # a tie: alphabetical
    assert canonical_spelling(["/a/{id}", "/a/{aId}"]) == "/a/{aId}"


# ------------------------------------------------------------------------------------------
# Literal segments beat parameters


def literal_param_pairs() -> list[tuple[str, str]]:
    """Every (literal route, parameter route) pair in the data where the literal route's path
    would also fit the parameter route: the literal must win."""
    pairs = []
    all_routes = TABLE.routes()
    for literal in all_routes:
        for param in all_routes:
            a, b = literal.shape, param.shape
            if literal is param or len(a) != len(b):
                continue
            fits = all(y == "{}" or x == y for x, y in zip(a, b, strict=True))
            if fits and any(x != "{}" and y == "{}" for x, y in zip(a, b, strict=True)):
                pairs.append((literal.template, param.template))
    return pairs


PAIRS = literal_param_pairs()


def test_literal_param_pairs_are_found_in_the_data() -> None:
    # Routes of equal length where a literal path would also fit a parameter.
    assert PAIRS == [("/payments/bulk", "/payments/{paymentId}")]


@pytest.mark.parametrize(("literal", "param"), PAIRS)
def test_literal_beats_parameter(literal: str, param: str) -> None:
    route = TABLE.route(literal)
    assert route is not None
    method = sorted(route.methods)[0]
    assert match(method, sample_path(literal)).template == literal
    assert match(method, sample_path(param)).template == param


def sibling_literals() -> set[tuple[str, str]]:
    """(route, literal segment) for every literal segment that has a parameter sibling in the
    route tree: at that point of the walk the literal must be tried first."""
    found = set()
    for route in TABLE.routes():
        for i, segment in enumerate(route.shape):
            if segment != "{}" and any(
                other.shape[:i] == route.shape[:i]
                and len(other.shape) > i
                and other.shape[i] == "{}"
                for other in TABLE.routes()
            ):
                found.add((route.template, segment))
    return found


SIBLING_LITERALS = sibling_literals()


def test_sibling_literals_are_found_in_the_data() -> None:
    assert SIBLING_LITERALS == {
        ("/payments/bulk", "bulk"),
        ("/payments/ach/expected-completion-date", "ach"),
        ("/check-payments/{checkPaymentId}/approve", "approve"),
        ("/check-payments/{checkPaymentId}/back", "back"),
        ("/check-payments/{checkPaymentId}/cancel", "cancel"),
        ("/check-payments/{checkPaymentId}/front", "front"),
        ("/check-payments/{checkPaymentId}/return", "return"),
    }


@pytest.mark.parametrize(("template", "literal"), sorted(SIBLING_LITERALS))
def test_literal_sibling_is_tried_before_the_parameter(template: str, literal: str) -> None:
    route = TABLE.route(template)
    assert route is not None
    assert match(sorted(route.methods)[0], sample_path(template)).template == template


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        # The literal leads nowhere: back up and take the parameter.
        ("POST", "/payments/ach/cancel", "/payments/{paymentId}/cancel"),
        ("GET", "/payments/ach", "/payments/{paymentId}"),
        ("POST", "/payments/bulk/cancel", "/payments/{paymentId}/cancel"),
        ("GET", "/check-payments/7/back", "/check-payments/{checkPaymentId}/back"),
        ("GET", "/check-payments/7/back/pdf", "/check-payments/{checkPaymentId}/{side}/{type}"),
        ("GET", "/statements/7/bank/pdf", "/statements/{accountId}/bank/pdf"),
        ("GET", "/statements/7/pdf", "/statements/{statementId}/pdf"),
    ],
)
def test_backtracking(method: str, path: str, template: str) -> None:
    found = match(method, path)
    assert found.template == template
    assert found.method_allowed


# ------------------------------------------------------------------------------------------
# Path handling


@pytest.mark.parametrize(
    "path",
    [
        "/cards/42",
        "/cards/42/",
        "/cards/42?include=customer",
        "/cards/42/?filter[status]=Active&page[limit]=10",
        "/cards/42?next=/payments/bulk",
        "/cards/4%32",
    ],
)
def test_query_string_and_trailing_slash_are_ignored(path: str) -> None:
    found = match("GET", path)
    assert found.template == "/cards/{cardId}"
    assert found.params == {"cardId": "42"}


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/card",
        "/cards/42/secure-data",
        "/cards/42/secure-data/ssn",
        "/v1/cards",
        "/cards/42/freeze/extra",
        # `//` that names no route merged or not, and letters case cannot make a route of.
        "/v1//cards",
        "/cards/42/freeze//extra",
        "/V1/cards",
    ],
)
def test_unknown_paths_match_nothing(path: str) -> None:
    assert TABLE.match("GET", path) is None
    assert route_label(TABLE.match("GET", path)) == OTHER_ROUTE == "other"
    assert TABLE.scopes_needed("GET", path) == frozenset()


def test_route_label_is_the_template() -> None:
    assert route_label(TABLE.match("GET", "/accounts/1")) == "/accounts/{accountId}"


def test_literals_are_compared_decoded() -> None:
    assert match("POST", "/payments/bul%6B").template == "/payments/bulk"
    assert match("GET", "/cards/1/secure-data/%70an").scope == "cards-sensitive"
    assert match("POST", "/customers/%31%30/%74%6F%6b%65%6e").params == {"customerId": "10"}


# ------------------------------------------------------------------------------------------
# Request targets servers read in more than one way are refused


def refusal(path: str, table: RouteTable = TABLE) -> str:
    """Why ``path`` is refused (the message the caller's 400 carries)."""
    with pytest.raises(UnreadableTarget) as refused:
        table.match("POST", path)
    return str(refused.value)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/customers/10001/token#x", "fragment"),
        ("/customers/10001/token?x#y", "fragment"),
        ("/customers/10001#/token", "fragment"),
        ("/customers%2F10001%2Ftoken", "an encoded / (%2F)"),
        ("/customers/10001%2ftoken", "an encoded / (%2F)"),
        ("/accounts/a%2Fb", "an encoded / (%2F)"),
        ("/customers/10001%5Ctoken", "an encoded backslash"),
        ("/customers/10001\\token", "a backslash"),
        ("/customers/10001/%252F/token", "an encoded % (%25)"),
        ("/customers/10001/token%3Fx", "an encoded ? (%3F)"),
        ("/customers/10001/token%23x", "an encoded # (%23)"),
        ("/customers/10001/token%3Bx", "an encoded ; (%3B)"),
        ("/customers/10001/token;x", "a ; (some servers strip ;parameters"),
        ("/customers/10001/token%00", "an encoded character (%00)"),
        ("/customers/10001/token%C3%A9", "an encoded character (%C3)"),
        ("/customers/10001/token%20", "an encoded character (%20)"),
        ("/customers/10001/token\x00", "a control character"),
        ("/customers/10001/token\x7f", "a control character"),
        ("/customers/10001/token x", "white space"),
        ("/customers/10001/token\tx", "white space"),
        ("/customers/10001/tok\u00e9n", "not ASCII"),
        ("/customers/10001/token[0]", "the character '['"),
        ('/customers/10001/"token"', "the character '\"'"),
        ("/customers/10001/token%", "a % that is not followed by two hex digits"),
        ("/customers/10001/token%4", "a % that is not followed by two hex digits"),
        ("/customers/10001/token%zz", "a % that is not followed by two hex digits"),
        ("/customers/10001/./token", "a dot segment"),
        ("/customers/10001/token/.", "a dot segment"),
        ("/customers/10001/token/./", "a dot segment"),
        ("/x/../customers/10001/token", "a dot segment"),
        ("/customers/10001/token/x/..", "a dot segment"),
        ("/customers/10001/%2e/token", "a dot segment"),
        ("/customers/10001/%2E%2e/10001/token", "a dot segment"),
        ("/customers/10001/.%2E/10001/token", "a dot segment"),
        ("/cards/.", "a dot segment"),
        ("/cards/../secure-data/pan", "a dot segment"),
        ("/customers/10001/token.", "a segment ending in ."),
        ("/customers/10001/token%2E", "a segment ending in ."),
        ("//customers/10001/token", "starts with //"),
        ("//evil/customers/10001/token", "starts with //"),
        ("/customers//10001/token", "an empty segment (//)"),
        ("/customers/10001//token", "an empty segment (//)"),
        ("/customers/10001/token//", "an empty segment (//)"),
        ("/cards//freeze", "an empty segment (//)"),
        ("/cards/42//", "an empty segment (//)"),
        ("/Customers/10001/token", "upper and lower case"),
        ("/customers/10001/TOKEN", "upper and lower case"),
        ("/customers/10001/%54oken", "upper and lower case"),
        ("/CARDS/30001/CARDHOLDER/TOKEN", "upper and lower case"),
        ("/Cards", "upper and lower case"),
        ("/payments/BULK", "upper and lower case"),
        ("", "does not start with /"),
        ("*", "does not start with /"),
        ("cards", "does not start with /"),
        ("https://api.s.unit.sh/cards", "does not start with /"),
    ],
)
def test_targets_servers_read_differently_are_refused(path: str, reason: str) -> None:
    message = refusal(path)
    assert reason in message
    # The message explains; it never quotes the target (ids, secrets).
    assert "10001" not in message and "token" not in message.replace("tokens", "")


def test_refusal_messages_never_quote_the_target() -> None:
    secret = "v2.public.c2VjcmV0"
    for path in (f"/cards/{secret}#x", f"/x/{secret}/%2F", f"/{secret}/../cards"):
        assert secret not in refusal(path)


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("/", ()),
        ("/cards", ("cards",)),
        ("/cards/", ("cards",)),
        ("/cards/42?include=customer#", None),
        ("/cards/42?next=/x/../y", ("cards", "42")),  # the query is not the path
        ("/c%61rds/%34%32", ("cards", "42")),
        ("/cards/%7E%2d%5f%2E1", ("cards", "~-_.1")),
        ("/cards/a.b", ("cards", "a.b")),
        ("/x//y", ("x", "", "y")),
        ("/cards/!$&'()*+,=:@", ("cards", "!$&'()*+,=:@")),
    ],
)
def test_read_target(path: str, segments: tuple[str, ...] | None) -> None:
    if segments is None:
        with pytest.raises(UnreadableTarget):
            read_target(path)
    else:
        assert read_target(path) == segments


def test_case_of_ids_and_escapes_is_kept_where_it_names_the_same_route() -> None:
    # Ids keep their case; a case-blind server still reads the same route.
    assert match("GET", "/customers/AbC").params == {"customerId": "AbC"}
    assert match("POST", "/customers/AbC/token").token_endpoint == "customer"
    assert match("GET", "/cards/%4A").params == {"cardId": "J"}  # hex digits of either case
    assert match("GET", "/cards/%4a").params == {"cardId": "J"}
    assert match("GET", "/payments/Bulk2").template == "/payments/{paymentId}"


def test_routes_that_differ_only_in_case_refuse_every_spelling() -> None:
    table = RouteTable.from_settings(
        RouteSettings(extra=[{"template": "/Widgets", "methods": ["GET"], "read": "cards"}])
    )
    assert table.match("GET", "/Widgets").template == "/Widgets"
    # A lower-case path is another route to a server that ignores case.
    assert "upper and lower case" in refusal("/widgets", table)
    clash = RouteTable(
        [
            Route("/Widgets", frozenset({"GET"}), "cards", None),
            Route("/widgets", frozenset({"GET"}), "accounts", None),
        ],
        (),
    )
    for path in ("/Widgets", "/widgets", "/WIDGETS"):
        assert "upper and lower case" in refusal(path, clash)


def test_wrong_method_is_flagged() -> None:
    found = match("DELETE", "/cards/42")
    assert found.template == "/cards/{cardId}"
    assert not found.method_allowed
    assert found.scope == "cards-write"  # what a write to it would need
    assert match("GET", "/payments/bulk").method_allowed is False
    assert match("POST", "/payments/bulk").method_allowed is True


def test_method_case_and_unusual_methods() -> None:
    assert match("get", "/cards").scope == "cards"
    assert match("get", "/cards").method_allowed
    odd = match("PROPFIND", "/cards")
    assert odd.scope is None and not odd.method_allowed and not odd.two_factor
    assert match("OPTIONS", "/cards").scope is None
    assert match("HEAD", "/cards").scope == "cards"


def test_match_result_is_immutable() -> None:
    found = match("GET", "/cards/1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.scope = "cards-write"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# Scopes


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/cards", "cards"),
        ("POST", "/cards", "cards-write"),
        ("GET", "/cards/1", "cards"),
        ("PATCH", "/cards/1", "cards-write"),
        ("POST", "/cards/1/freeze", "cards-write"),
        ("GET", "/cards/1/limits", "cards"),
        ("GET", "/cards/1/secure-data/pan", "cards-sensitive"),
        ("GET", "/cards/1/secure-data/cvv2", "cards-sensitive"),
        ("POST", "/cards/1/secure-data/pin", "cards-sensitive-write"),
        ("GET", "/cards/1/secure-data/pin/status", "cards-sensitive"),
        ("POST", "/cards/1/mobile-wallet-payload", "cards"),
        ("GET", "/atm-locations", "cards"),
        ("GET", "/payments", "payments"),
        ("POST", "/payments", "payments-write"),
        ("POST", "/payments/bulk", "payments-write"),
        ("PATCH", "/payments/1", "payments-write"),
        ("POST", "/payments/1/cancel", "payments-write"),
        ("POST", "/payments/ach/expected-completion-date", "payments"),
        ("POST", "/recurring-payments", "payments-write"),
        ("POST", "/stop-payments", "payments-write"),
        ("GET", "/counterparties", "counterparties"),
        ("POST", "/counterparties", "counterparties-write"),
        ("DELETE", "/counterparties/1", "counterparties-write"),
        ("GET", "/counterparties/1/balance", "counterparties"),
        ("GET", "/applications", "applications"),
        ("POST", "/applications", "applications-write"),
        ("PUT", "/applications/1/documents/2/multipart", "applications-write"),
        ("GET", "/applications/1/documents/2/download", "applications"),
        ("POST", "/application/1/documents/2/verify", "applications-write"),
        ("GET", "/customers", "customers"),
        ("PATCH", "/customers/1", "customers-write"),
        ("POST", "/customers/1/authorized-users", "customers-write"),
        ("GET", "/accounts", "accounts"),
        ("POST", "/accounts", "accounts-write"),
        ("POST", "/accounts/1/freeze", "accounts-write"),
        ("GET", "/accounts/1/limits", "accounts"),
        ("GET", "/transactions", "transactions"),
        ("PATCH", "/transactions/1", "transactions-write"),
        ("GET", "/accounts/1/transactions/2", "transactions"),
        ("PATCH", "/accounts/1/transactions/2", "transactions-write"),
        ("GET", "/statements/1/pdf", "statements"),
        ("GET", "/tax-forms/1/pdf", "statements"),
        ("GET", "/received-payments/1", "received-payments"),
        ("POST", "/check-deposits", "check-deposits-write"),
        ("GET", "/authorizations/1", "authorizations"),
        ("POST", "/authorization-requests/1/approve", "authorization-requests-write"),
        ("GET", "/webhooks", "webhooks"),
        ("GET", "/events", "events"),
        ("POST", "/fees", "accounts-write"),
        ("POST", "/customers/1/token", "customer-token-write"),
        ("POST", "/customers/1/token/verification", "customer-token-write"),
        ("POST", "/cards/1/cardholder/token", "cards-write"),
        ("POST", "/cards/1/cardholder/token/verification", "cards-write"),
        # Unit publishes no scope for these.
        ("GET", "/store-locations", None),
        ("GET", "/institutions/091000019", None),
    ],
)
def test_scope_per_route_and_method(method: str, path: str, scope: str | None) -> None:
    found = match(method, path)
    assert found.method_allowed
    assert found.scope == scope
    assert TABLE.scopes_needed(method, path) == (frozenset({scope}) if scope else frozenset())


def test_every_default_scope_is_a_unit_scope() -> None:
    # Catches typos in route-scopes.yaml. "disputes" is documented on Unit's disputes page
    # though missing from the scope list in docs/unit-api.md.
    known = ALL_SCOPES | {"disputes"}
    used = {s for r in TABLE.routes() for s in (r.read_scope, r.write_scope) if s}
    assert used - known == set()
    assert TABLE.two_factor_scopes <= known


def test_every_route_is_listed_with_its_scopes() -> None:
    listed = TABLE.routes()
    assert [r.template for r in listed] == sorted(r.template for r in listed)
    assert all(isinstance(r, Route) for r in listed)
    lines = TABLE.describe()
    assert len(lines) == len(listed)
    assert any(
        "/cards/{cardId}/secure-data/pan" in line and "read=cards-sensitive" in line
        for line in lines
    )


def test_packaged_rules_must_cover_every_route() -> None:
    # A route without any rule is refused at start-up instead of silently needing no scope.
    rules = route_data.default_rules()
    without_cards = dataclasses.replace(
        rules, prefixes=tuple(p for p in rules.prefixes if p[0] != ("cards",))
    )
    with pytest.raises(ValueError, match="no rule for /cards"):
        routes._unit_routes(without_cards)


# ------------------------------------------------------------------------------------------
# Two-factor


DEFAULT_TWO_FACTOR = {
    "cards-write",
    "cards-sensitive",
    "cards-sensitive-write",
    "counterparties-write",
    "payments-write",
    "payments-write-counterparty",
    "payments-write-ach-debit",
    "payments-write-linked-account",
    "ach-payments-write",
    "wire-payments-write",
}


def test_default_two_factor_scopes() -> None:
    assert TABLE.two_factor_scopes == DEFAULT_TWO_FACTOR
    assert route_data.default_two_factor_scopes() == DEFAULT_TWO_FACTOR


@pytest.mark.parametrize(
    ("method", "path", "two_factor"),
    [
        ("GET", "/cards/1", False),
        ("PATCH", "/cards/1", True),
        ("GET", "/cards/1/secure-data/pan", True),
        ("POST", "/cards/1/secure-data/pin", True),
        ("POST", "/payments", True),
        ("GET", "/payments", False),
        ("POST", "/counterparties", True),
        ("GET", "/counterparties", False),
        ("POST", "/accounts", False),
        ("PATCH", "/customers/1", False),
        ("POST", "/customers/1/token", False),
        ("GET", "/store-locations", False),
    ],
)
def test_two_factor_flag_with_default_scopes(method: str, path: str, two_factor: bool) -> None:
    assert match(method, path).two_factor is two_factor


def test_two_factor_scopes_can_be_replaced() -> None:
    table = RouteTable.from_settings(RouteSettings(two_factor_scopes=["accounts-write"]))
    assert table.two_factor_scopes == {"accounts-write"}
    assert match("POST", "/accounts", table).two_factor
    assert not match("POST", "/payments", table).two_factor
    assert not match("GET", "/cards/1/secure-data/pan", table).two_factor


def test_two_factor_scopes_can_be_extended() -> None:
    table = RouteTable.from_settings(RouteSettings(extra_two_factor_scopes=["customers-write"]))
    assert table.two_factor_scopes == DEFAULT_TWO_FACTOR | {"customers-write"}
    assert match("PATCH", "/customers/1", table).two_factor
    assert match("POST", "/payments", table).two_factor
    # Both: replace, then add.
    table = RouteTable.from_settings(
        RouteSettings(two_factor_scopes=["cards-write"], extra_two_factor_scopes=["accounts-write"])
    )
    assert table.two_factor_scopes == {"cards-write", "accounts-write"}


def test_empty_two_factor_list_turns_two_factor_off() -> None:
    table = RouteTable.from_settings(RouteSettings(two_factor_scopes=[]))
    assert not match("GET", "/cards/1/secure-data/pan", table).two_factor


# ------------------------------------------------------------------------------------------
# Org-only routes and token endpoints


EXPECTED_ORG_ONLY = {
    "/users/{userId}/api-tokens",
    "/users/{userId}/api-tokens/{tokenId}",
    "/webhooks",
    "/webhooks/{webhookId}",
    "/webhooks/{webhookId}/disable",
    "/webhooks/{webhookId}/enable",
    "/events",
    "/events/{eventId}",
    "/accounts/{accountId}/close",
    "/fees",
    "/fees/reverse",
    "/batch-releases",
    "/authorization-requests/{authorizationId}/approve",
    "/authorization-requests/{authorizationId}/decline",
    "/application-forms",
    "/application-forms/{applicationFormId}",
    "/fraud-outreach-policies",
    "/fraud-outreach-policies/{policyId}",
    "/lending-programs",
    "/lending-programs/{id}",
    "/lending-programs/{id}/extended",
    "/sandbox/atm-deposits",
    "/sandbox/cards/{cardId}/activate",
    "/sandbox/received-ach-payment",
    "/sandbox/received-payments",
}


def test_org_only_routes() -> None:
    assert {r.template for r in TABLE.routes() if r.org_only} == EXPECTED_ORG_ONLY
    assert match("POST", "/users/1/api-tokens").org_only
    assert match("GET", "/webhooks").org_only
    assert not match("GET", "/accounts/1").org_only
    assert not match("POST", "/accounts/1/freeze").org_only
    assert not match("GET", "/authorization-requests/1").org_only


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/customers/1/token", "customer"),
        ("/customers/1/token/verification", "customer-verification"),
        ("/cards/1/cardholder/token", "cardholder"),
        ("/cards/1/cardholder/token/verification", "cardholder-verification"),
    ],
)
def test_token_endpoints_are_recognised(path: str, kind: str) -> None:
    found = match("POST", path)
    assert found.token_endpoint == kind
    assert not found.org_only  # a customer token with customer-token-write may upgrade itself
    assert found.cardholder_card_id is None


def test_only_the_four_token_endpoints_are_flagged() -> None:
    flagged = {r.template: r.token_endpoint for r in TABLE.routes() if r.token_endpoint}
    assert flagged == {
        "/customers/{customerId}/token": "customer",
        "/customers/{customerId}/token/verification": "customer-verification",
        "/cards/{cardId}/cardholder/token": "cardholder",
        "/cards/{cardId}/cardholder/token/verification": "cardholder-verification",
    }


# ------------------------------------------------------------------------------------------
# Cardholder tokens


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/cards/c1", True),
        ("PATCH", "/cards/c1", True),
        ("GET", "/cards/c1/limits", True),
        ("POST", "/cards/c1/freeze", True),
        ("GET", "/cards/c1/secure-data/pan", True),
        ("POST", "/cards/c1/secure-data/pin", True),
        ("POST", "/cards/c1/mobile-wallet-payload", True),
        ("GET", "/cards", False),  # lists every card of the customer
        ("POST", "/cards", False),
        ("POST", "/cards/c1/cardholder/token", False),
        ("POST", "/cards/c1/cardholder/token/verification", False),
        ("POST", "/sandbox/cards/c1/activate", False),
        ("GET", "/atm-locations", False),
        ("GET", "/accounts/c1", False),
        ("GET", "/authorizations", False),
    ],
)
def test_cardholder_eligibility(method: str, path: str, allowed: bool) -> None:
    found = match(method, path)
    assert found.cardholder_allowed is allowed
    assert found.allows_cardholder("c1") is allowed
    # Never for another card.
    assert not found.allows_cardholder("c2")


def test_cardholder_card_id_is_decoded() -> None:
    found = match("GET", "/cards/c%31/secure-data/cvv2")
    assert found.allows_cardholder("c1")
    assert not found.allows_cardholder("c%31")


# ------------------------------------------------------------------------------------------
# Extending and overriding from the configuration


def test_settings_add_a_new_route() -> None:
    settings = RouteSettings(
        extra=[
            RouteRule(template="/widgets/{widgetId}", methods=["GET", "patch"], read="widgets"),
        ]
    )
    table = RouteTable.from_settings(settings)
    found = match("GET", "/widgets/w1", table)
    assert found.template == "/widgets/{widgetId}"
    assert found.params == {"widgetId": "w1"}
    assert found.scope == "widgets"
    assert found.method_allowed
    patched = match("PATCH", "/widgets/w1", table)
    assert patched.method_allowed and patched.scope is None  # no write scope given, no rule
    route = table.route("/widgets/{widgetId}")
    assert route is not None and route.from_config
    assert len(table.routes()) == 165
    assert TABLE.match("GET", "/widgets/w1") is None  # the default table is untouched


def test_new_route_inherits_the_prefix_rules() -> None:
    table = RouteTable.from_settings(
        RouteSettings(
            extra=[
                RouteRule(template="/cards/{cardId}/pin-reset", methods=["POST"]),
                RouteRule(template="/applications/{applicationId}/missing-fields", methods=["GET"]),
                RouteRule(template="/webhooks/{webhookId}/test", methods=["POST"]),
            ]
        )
    )
    reset = match("POST", "/cards/c1/pin-reset", table)
    assert reset.scope == "cards-write" and reset.two_factor and reset.allows_cardholder("c1")
    assert match("GET", "/applications/1/missing-fields", table).scope == "applications"
    assert match("POST", "/webhooks/1/test", table).org_only


def test_new_literal_route_beats_existing_parameter() -> None:
    table = RouteTable.from_settings(
        RouteSettings(extra=[RouteRule(template="/payments/preview", methods=["POST"])])
    )
    assert match("POST", "/payments/preview", table).template == "/payments/preview"
    assert match("GET", "/payments/p1", table).template == "/payments/{paymentId}"


def test_settings_override_an_existing_route() -> None:
    table = RouteTable.from_settings(
        RouteSettings(
            extra=[
                RouteRule(template="/payments/bulk", write="payments-write-counterparty"),
                # Any spelling names the route.
                RouteRule(template="/applications/{id}", read="customers"),
                RouteRule(template="/cards/{cardId}/limits", methods=["PUT"]),
                RouteRule(template="/events", org_only=False),
                RouteRule(template="/store-locations", read="cards"),
                RouteRule(template="/atm-locations", read=None),
            ]
        )
    )
    bulk = match("POST", "/payments/bulk", table)
    assert bulk.scope == "payments-write-counterparty" and bulk.two_factor
    assert match("POST", "/payments", table).scope == "payments-write"  # neighbours untouched
    app = match("GET", "/applications/1", table)
    assert app.template == "/applications/{applicationId}" and app.scope == "customers"
    assert match("PATCH", "/applications/1", table).scope == "applications-write"
    limits = table.route("/cards/{cardId}/limits")
    assert limits is not None and limits.methods == {"GET", "PUT"}
    assert match("PUT", "/cards/1/limits", table).scope == "cards-write"
    assert not match("GET", "/events", table).org_only
    assert match("GET", "/store-locations", table).scope == "cards"
    assert match("GET", "/atm-locations", table).scope is None  # explicit null: no scope
    assert len(table.routes()) == 164


def test_no_settings_is_the_default_table() -> None:
    assert RouteTable.from_settings(None) is RouteTable.default()
    assert RouteTable.from_settings(RouteSettings()).describe() == TABLE.describe()


def test_settings_from_yaml_shaped_data() -> None:
    settings = RouteSettings.model_validate(
        {
            "extra": [{"template": "/widgets", "methods": ["GET"], "read": "widgets"}],
            "extra_two_factor_scopes": ["widgets"],
        }
    )
    assert match("GET", "/widgets", RouteTable.from_settings(settings)).two_factor
    with pytest.raises(ValidationError, match="frozen"):
        settings.two_factor_scopes = ["cards"]  # type: ignore[misc]


def rule_problem(data: dict[str, Any]) -> str:
    """The message a bad rule produces, as the config module would show it (after the field)."""
    with pytest.raises(ValidationError) as raised:
        RouteSettings.model_validate(data)
    error = raised.value.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if error["type"] == "value_error":
        assert type(cause) is ValueError  # plain ValueError: the config module shows str()
        return str(cause)
    return f"{error['type']}: {error['msg']}"


GET = {"methods": ["GET"]}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"template": "cards/{cardId}", **GET}, "template 'cards/{cardId}' must start with /"),
        ({"template": "/cards/", **GET}, "template '/cards/' must not end with /"),
        ({"template": "/cards//x", **GET}, "has an empty segment"),
        ({"template": "/cards/{card id}", **GET}, "must be a whole parameter {name}"),
        ({"template": "/cards/{}", **GET}, "must be a whole parameter {name}"),
        ({"template": "/cards/x{cardId}", **GET}, "must be a whole parameter {name}"),
        ({"template": "/a/{id}/b/{id}", **GET}, "repeats parameter {id}"),
        ({"template": "/cards?x=1", **GET}, "must not contain"),
        ({"template": "/widgets", "methods": ["FETCH"]}, "method 'FETCH' is not one of"),
        ({"template": "/widgets", "methods": ["GET", "get"]}, "method GET is listed twice"),
        ({"template": "/widgets", **GET, "read": "Widgets"}, "scope 'Widgets' is not a scope"),
        ({"template": "/widgets", **GET, "write": "widgets-"}, "scope 'widgets-' is not a scope"),
        ({"template": "/widgets", **GET, "read": "a b"}, "scope 'a b' is not a scope name"),
        (
            {"template": "/widgets", "read": "widgets"},
            "/widgets is not a known Unit route: a new route needs methods",
        ),
        ({"template": "/cards"}, "rule for /cards changes nothing"),
        ({"template": "/cards", "scope": "cards"}, "extra_forbidden"),
    ],
)
def test_invalid_rules_say_what_is_wrong(rule: dict[str, Any], message: str) -> None:
    assert message in rule_problem({"extra": [rule]})


def test_invalid_settings_say_what_is_wrong() -> None:
    assert "scope 'Cards' is not a scope name" in rule_problem({"two_factor_scopes": ["Cards"]})
    assert "scope 'x' is not a scope name" in rule_problem({"extra_two_factor_scopes": ["x"]})
    duplicate = rule_problem(
        {
            "extra": [
                {"template": "/accounts/{accountId}", "read": "accounts"},
                {"template": "/accounts/{id}", "write": "accounts-write"},
            ]
        }
    )
    assert "items 0 and 1" in duplicate and "are the same route" in duplicate
    assert "extra_forbidden" in rule_problem({"extras": []})


def test_error_location_names_the_rule() -> None:
    with pytest.raises(ValidationError) as raised:
        RouteSettings.model_validate(
            {"extra": [{"template": "/cards", "read": "cards"}, {"template": "nope"}]}
        )
    assert raised.value.errors()[0]["loc"] == ("extra", 1, "template")


# ------------------------------------------------------------------------------------------
# Properties


IDS = st.one_of(
    st.text(min_size=1, max_size=24),
    st.sampled_from(
        [
            "a/b",
            "/",
            "%2F",
            "%",
            "%zz",
            "a.b",
            "...",
            ".a",
            "a..",
            "?",
            "#",
            "\u00e9",
            "\u652f\u4ed8",
            "\U0001f4b3",
        ]
    ),
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
)


def encode(value: str, how: str) -> str:
    """How a client may send an id: fully percent-encoded, encoded only where RFC 3986 needs
    it in a path segment, or raw (unicode as is) with only / ? # % escaped."""
    if how == "all":
        return quote(value, safe="")
    if how == "minimal":
        return quote(value, safe="!$&'()*+,;=:@-._~")
    return "".join(quote(c, safe="") if c in "/?#%" else c for c in value)


@given(
    template=st.sampled_from(TABLE.templates()),
    ids=st.lists(IDS, min_size=6, max_size=6),
    how=st.sampled_from(["all", "minimal", "raw"]),
)
@example(template="/cards/{cardId}/secure-data/pan", ids=["a/b", *"xxxxx"], how="raw")
@example(template="/payments/{paymentId}", ids=["bulk/x", *"xxxxx"], how="minimal")
@example(template="/payments/{paymentId}", ids=["Bulk", *"xxxxx"], how="raw")
@example(template="/accounts/{accountId}", ids=["..a", *"xxxxx"], how="raw")
@settings(max_examples=500, deadline=None)
def test_ids_never_change_the_matched_template(template: str, ids: list[str], how: str) -> None:
    # An id equal to a literal of the route list legitimately selects that literal route.
    # Any other id reads back as itself in the same route, or the target is refused: it
    # never selects another route.
    assume(all(i not in LITERALS for i in ids))
    try:
        found = TABLE.match("GET", sample_path(template, [encode(i, how) for i in ids]))
    except UnreadableTarget:
        return
    assert found is not None
    assert found.template == template
    names = templates.parse_template(template)[1]
    assert found.params == dict(zip(names, ids, strict=False))


def reference_match(segments: list[str]) -> str | None:
    """A deliberately naive matcher: among all routes that fit, the one whose literal
    segments come first (compared position by position)."""
    fitting = [
        route
        for route in TABLE.routes()
        if len(route.shape) == len(segments)
        and all(
            (s == "{}" and seg != "") or s == seg
            for s, seg in zip(route.shape, segments, strict=True)
        )
    ]
    if not fitting:
        return None
    best = min(fitting, key=lambda r: [s == "{}" for s in r.shape])
    return best.template


@given(
    st.lists(
        st.one_of(st.sampled_from(sorted(LITERALS)), st.sampled_from(["1", "x", ".", ""])),
        min_size=1,
        max_size=7,
    )
)
@settings(max_examples=1000, deadline=None)
def test_tree_agrees_with_naive_matcher(segments: list[str]) -> None:
    read = segments[:-1] if segments[-1] == "" else segments
    try:
        found = TABLE.match("GET", "/" + "/".join(segments))
    except UnreadableTarget:
        # Only for a dot segment, a leading `//`, or a `//` where merging names a route.
        merged = [s for s in read if s]
        assert "." in read or read[0] == "" or reference_match(merged) is not None
        return
    assert "." not in read
    expected = reference_match(read)
    assert route_label(found) == (expected or OTHER_ROUTE)
