"""The local sandbox through Unit's own SDKs: what they send is accepted, what it answers decodes.

- ``unit-python-sdk`` (``import unit``) returns ``UnitResponse`` or ``UnitError`` objects.
- ``unit-openapi-python-sdk`` (``import unit_finance_sdk``) validates responses with pydantic and
  raises ``ApiException`` subclasses for errors.
Neither has a method for card secure data (PAN, CVV2): those are read with plain HTTP and a
customer token, as an app would through Unit's secure host.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pydantic
import pytest
import requests
from unit import Unit
from unit.models import Address, FullName, Phone, Relationship, UnitError, UnitResponse
from unit.models.account import DepositAccountDTO
from unit.models.application import CreateIndividualApplicationRequest, IndividualApplicationDTO
from unit.models.card import (
    BusinessDebitCardDTO,
    CreateIndividualDebitCard,
    IndividualDebitCardDTO,
    PinStatusDTO,
)
from unit.models.customer import BusinessCustomerDTO, IndividualCustomerDTO
from unit.models.customerToken import CreateCustomerToken, CreateCustomerTokenVerification
from unit.models.payment import AchPaymentDTO, BookPaymentDTO, CreateBookPaymentRequest
from unit.models.transaction import BookTransactionDTO, PurchaseTransactionDTO
from unit_finance_sdk import ApiClient, Configuration, exceptions
from unit_finance_sdk.api import (
    AccountsApi,
    ApplicationsApi,
    CardHolderAPITokensApi,
    CardsApi,
    CustomersApi,
    PaymentsApi,
    TransactionsApi,
)
from unit_finance_sdk.models import (
    CreateApplicationRequest,
    CreateCardholderTokenRequest,
    CreateCardholderTokenVerificationRequest,
    CreateCardRequest,
    CreatePaymentRequest,
    ErrorDocument,
)

from unit_gateway.sandbox.data import luhn_valid
from unit_gateway.unit_api import paseto

if TYPE_CHECKING:
    from sandbox_fixtures import SandboxProcess

pytest_plugins = ["sandbox_fixtures"]


def ok(response: UnitResponse[Any] | UnitError) -> Any:
    """The data of a python-SDK response that must have succeeded."""
    assert isinstance(response, UnitResponse), str(response)
    return response.data


def failed(response: UnitResponse[Any] | UnitError, status: int) -> UnitError:
    assert isinstance(response, UnitError), "expected an error"
    assert [e.status for e in response.errors] == [str(status)], str(response)
    return response


def api(cls: type, client: ApiClient) -> Any:
    """An OpenAPI-SDK API object, typed loosely: its models make every field Optional."""
    return cls(client)


def model(cls: Any, document: dict[str, Any]) -> Any:
    """An OpenAPI-SDK request model, validated by the SDK itself."""
    built = cls.from_dict(document)
    assert built is not None
    return built


def parsed_errors(error: exceptions.ApiException) -> list[Any]:
    """The errors the OpenAPI SDK itself parsed into an ``ErrorDocument`` (400/401/404)."""
    assert isinstance(error.data, ErrorDocument), error
    return list(error.data.errors)


def body_of(error: exceptions.ApiException) -> Any:
    """The JSON body of an OpenAPI-SDK exception (set even when the SDK did not parse it)."""
    assert error.body is not None
    return json.loads(error.body)


@pytest.fixture
def openapi(box: SandboxProcess) -> Iterator[Any]:
    """An ``ApiClient`` factory for the OpenAPI SDK (which ignores proxy variables)."""
    clients: list[ApiClient] = []

    def make(token: str) -> ApiClient:
        client = ApiClient(Configuration(host=box.url, access_token=token))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.rest_client.pool_manager.clear()


# --- unit-python-sdk -------------------------------------------------------------------------


def test_python_sdk_customer_tokens_with_and_without_two_factor(box: SandboxProcess) -> None:
    org = Unit(box.url, box.org_token)
    plain = ok(org.customerTokens.create_token(CreateCustomerToken("10001", "customers cards")))
    assert plain.type == "customerBearerToken" and plain.attributes["expiresIn"] == 86400
    claims = paseto.claims_of(plain.attributes["token"])
    assert claims is not None and claims["scope"] == "customers cards"

    verification = ok(
        org.customerTokens.create_token_verification(
            CreateCustomerTokenVerification("10001", "sms")
        )
    )
    assert verification.type == "customerTokenVerification"
    strong = ok(
        org.customerTokens.create_token(
            CreateCustomerToken(
                "10001",
                "cards cards-write cards-sensitive accounts payments payments-write transactions",
                verification_token=verification.attributes["verificationToken"],
                verification_code="000001",
                expires_in=600,
            )
        )
    )
    assert strong.attributes["expiresIn"] == 600
    customer = Unit(box.url, strong.attributes["token"])

    cards = ok(customer.cards.list())
    assert {"30001", "30002"} <= {c.id for c in cards}
    assert {c.relationships["customer"].id for c in cards} == {"10001"}
    card = ok(customer.cards.get("30001"))
    assert isinstance(card, IndividualDebitCardDTO)
    assert card.attributes["createdAt"].tzinfo is not None
    failed(customer.cards.get("30003"), 403)

    # No SDK method reads the PAN: plain HTTP with the customer token, as an app would.
    pan = requests.get(
        f"{box.url}/cards/30001/secure-data/pan",
        headers={"Authorization": f"Bearer {strong.attributes['token']}"},
        timeout=10,
    ).json()["data"]["attributes"]["pan"]
    assert luhn_valid(pan) and pan.endswith(card.attributes["last4Digits"])

    created = ok(
        customer.cards.create(
            CreateIndividualDebitCard(
                {"account": Relationship("depositAccount", "20001")},
                shipping_address=Address("1 Main St", "Palo Alto", "CA", "94301", "US"),
                idempotency_key="sdk-card",
            )
        )
    )
    assert isinstance(created, IndividualDebitCardDTO)

    payment = ok(
        customer.payments.create(
            CreateBookPaymentRequest(
                250,
                "Lunch",
                {
                    "account": Relationship("depositAccount", "20001"),
                    "counterpartyAccount": Relationship("depositAccount", "20003"),
                },
            )
        )
    )
    assert isinstance(payment, BookPaymentDTO) and payment.attributes["status"] == "Sent"
    assert isinstance(ok(customer.payments.get(payment.id)), BookPaymentDTO)
    failed(customer.payments.get("40003"), 403)  # Pied Piper's
    transactions = ok(customer.transactions.list())
    assert {t.relationships["account"].id for t in transactions} <= {"20001", "20002"}
    assert any(isinstance(t, BookTransactionDTO) for t in transactions)


def test_python_sdk_reads_every_seeded_resource_with_the_org_token(box: SandboxProcess) -> None:
    org = Unit(box.url, box.org_token)
    customers = ok(org.customers.list())
    assert {type(c) for c in customers} == {IndividualCustomerDTO, BusinessCustomerDTO}
    assert ok(org.customers.get("10004")).attributes["contact"].email == "richard@piedpiper.example"
    accounts = ok(org.accounts.list())
    assert all(isinstance(a, DepositAccountDTO) for a in accounts) and len(accounts) >= 6
    account = ok(org.accounts.get("20001"))
    assert account.attributes["routingNumber"] and account.attributes["accountNumber"]
    assert isinstance(ok(org.cards.get("30005")), BusinessDebitCardDTO)
    pin = ok(org.cards.get_pin_status("30001"))
    assert isinstance(pin, PinStatusDTO) and pin.attributes["status"] == "Set"
    payments = ok(org.payments.list())
    assert {type(p) for p in payments} >= {BookPaymentDTO, AchPaymentDTO}
    purchase = ok(org.transactions.get_by_id_and_account("50003", "20001"))
    assert isinstance(purchase, PurchaseTransactionDTO)
    applications = ok(org.applications.list())
    assert len(applications) >= 6
    application = ok(
        org.applications.create(
            CreateIndividualApplicationRequest(
                FullName("Grace", "Test"),
                datetime.date(1992, 3, 4),
                Address("2 Main St", "Austin", "TX", "78701", "US"),
                "grace@example.com",
                Phone("1", "5555550150"),
                ssn="900661234",
            )
        )
    )
    assert isinstance(application, IndividualApplicationDTO)
    assert application.attributes["ssn"] == "900661234"  # echoed, as Unit does
    assert ok(org.applications.get(application.id)).id == application.id


def test_python_sdk_error_objects(box: SandboxProcess) -> None:
    org = Unit(box.url, box.org_token)
    bad = failed(Unit(box.url, "v2.public.not-a-real-token").cards.list(), 401)
    assert bad.errors[0].code == "malformed_token"

    narrow = ok(org.customerTokens.create_token(CreateCustomerToken("10001", "customers")))
    forbidden = failed(Unit(box.url, narrow.attributes["token"]).cards.list(), 403)
    assert "cards" in str(forbidden.errors[0])

    too_long = failed(
        org.customerTokens.create_token(CreateCustomerToken("10001", "cards", expires_in=86401)),
        400,
    )
    assert too_long.errors[0].source == {"pointer": "/data/attributes/expiresIn"}

    for _ in range(5):
        ok(
            org.customerTokens.create_token_verification(
                CreateCustomerTokenVerification("10002", "sms")
            )
        )
    limited = failed(
        org.customerTokens.create_token_verification(
            CreateCustomerTokenVerification("10002", "sms")
        ),
        429,
    )
    assert limited.errors[0].code == "verification_rate_limited"

    failed(org.cards.get("39999"), 404)
    failed(org.customerTokens.create_token(CreateCustomerToken("19999", "cards")), 404)


# --- unit-openapi-python-sdk -----------------------------------------------------------------


def test_openapi_sdk_lists_and_gets_with_org_and_customer_tokens(
    box: SandboxProcess, openapi: Any
) -> None:
    org = openapi(box.org_token)
    cards = api(CardsApi, org).list_cards(page_limit="100")
    kinds = {type(c.actual_instance).__name__ for c in cards.data}
    assert kinds == {
        "IndividualDebitCard",
        "IndividualVirtualDebitCard",
        "BusinessDebitCard",
        "BusinessVirtualDebitCard",
    }
    card = api(CardsApi, org).get_card("30005").data.actual_instance
    assert card.attributes.bin and card.attributes.full_name.first == "Richard"
    assert api(CardsApi, org).get_card_pin_status("30002").data.attributes.status == "NotSet"
    assert len(api(CustomersApi, org).list_customers().data) >= 5
    assert api(CustomersApi, org).get_customer("10004").data.actual_instance.attributes.ein
    assert api(AccountsApi, org).get_account("20005").data.actual_instance.attributes.balance > 0
    assert len(api(AccountsApi, org).list_accounts(filter_customer_id="10001").data) == 2
    transactions = api(TransactionsApi, org).list_transactions(filter_account_id="20001")
    assert {type(t.actual_instance).__name__ for t in transactions.data} >= {"PurchaseTransaction"}
    book = api(TransactionsApi, org).get_transaction("20003", "50002").data.actual_instance
    assert book.attributes.direction == "Credit"
    applications = api(ApplicationsApi, org).list().data
    assert {type(a.actual_instance).__name__ for a in applications} == {
        "IndividualApplication",
        "BusinessApplication",
    }

    jane_token = box.customer_token_2fa("10001", "cards cards-write payments-write")
    jane = openapi(jane_token)
    mine = [c.actual_instance for c in api(CardsApi, jane).list_cards().data]
    assert {"30001", "30002"} <= {c.id for c in mine}  # and any card Jane made earlier
    assert {c.relationships.customer.data.actual_instance.id for c in mine} == {"10001"}
    assert api(CardsApi, jane).get_card("30002").data.actual_instance.attributes.last4_digits
    with pytest.raises(exceptions.ForbiddenException) as denied:
        api(CardsApi, jane).get_card("30005")
    assert body_of(denied.value)["errors"][0]["status"] == "403"

    def card_on(account_id: str) -> CreateCardRequest:
        return model(
            CreateCardRequest,
            {
                "data": {
                    "type": "individualDebitCard",
                    "attributes": {},
                    "relationships": {
                        "account": {"data": {"type": "depositAccount", "id": account_id}}
                    },
                }
            },
        )

    created = api(CardsApi, jane).create_card(card_on("20002")).data.actual_instance
    assert created.type == "individualDebitCard" and created.attributes.status == "Active"
    with pytest.raises(exceptions.ForbiddenException):
        api(CardsApi, jane).create_card(card_on("20003"))  # John's account
    with pytest.raises(exceptions.BadRequestException) as refused:
        api(CardsApi, org).create_card(card_on("20005"))  # a business account needs a business card
    assert parsed_errors(refused.value)[0].source.pointer == "/data/relationships/account"

    payment = (
        api(PaymentsApi, jane)
        .create_payment(
            model(
                CreatePaymentRequest,
                {
                    "data": {
                        "type": "bookPayment",
                        "attributes": {"amount": 100, "description": "Coffee"},
                        "relationships": {
                            "account": {"data": {"type": "depositAccount", "id": "20001"}},
                            "counterpartyAccount": {
                                "data": {"type": "depositAccount", "id": "20004"}
                            },
                        },
                    }
                },
            )
        )
        .data.actual_instance
    )
    assert type(payment).__name__ == "BookPayment" and payment.attributes.status == "Sent"

    application = (
        api(ApplicationsApi, org)
        .create_application(
            model(
                CreateApplicationRequest,
                {
                    "data": {
                        "type": "individualApplication",
                        "attributes": {
                            "ssn": "900771234",
                            "fullName": {"first": "Alan", "last": "Test"},
                            "dateOfBirth": "1988-06-23",
                            "address": {
                                "street": "3 Main St",
                                "city": "Austin",
                                "state": "TX",
                                "postalCode": "78701",
                                "country": "US",
                            },
                            "phone": {"countryCode": "1", "number": "5555550177"},
                            "email": "alan@example.com",
                            "occupation": "ScientistOrTechnologist",
                            "annualIncome": "Between50kAnd100k",
                            "sourceOfIncome": "EmploymentOrPayrollIncome",
                        },
                    }
                },
            )
        )
        .data.actual_instance
    )
    assert application.attributes.ssn == "900771234"
    assert application.attributes.date_of_birth == datetime.date(1988, 6, 23)
    assert (
        api(ApplicationsApi, org).get_by_id(application.id).data.actual_instance.id
        == application.id
    )


def test_openapi_sdk_cardholder_tokens(box: SandboxProcess, openapi: Any) -> None:
    org = api(CardHolderAPITokensApi, openapi(box.org_token))

    def verify(card_id: str) -> str:
        response = org.create_cardholder_token_verification(
            card_id,
            model(
                CreateCardholderTokenVerificationRequest,
                {"data": {"type": "cardholderTokenVerification", "attributes": {"channel": "sms"}}},
            ),
        )
        assert response.data.type == "cardholderTokenVerification"
        token: str = response.data.attributes.verification_token
        return token

    def request(card_id: str, scope: str, code: str = "000001", **extra: Any) -> Any:
        attributes = {
            "scope": scope,
            "verificationToken": verify(card_id),
            "verificationCode": code,
            **extra,
        }
        return model(
            CreateCardholderTokenRequest,
            {"data": {"type": "cardholderToken", "attributes": attributes}},
        )

    # Unit's docs (and the node SDK) answer `cardholderBearerToken`, as the sandbox does; this
    # OpenAPI SDK only accepts `cardholderToken`, so its typed method cannot decode the answer.
    with pytest.raises((ValueError, pydantic.ValidationError)):
        org.create_cardholder_token("30005", request("30005", "cards"))
    raw = org.create_cardholder_token_without_preload_content(
        "30005", request("30005", "cards cards-sensitive")
    )
    assert raw.status == 201
    data = json.loads(raw.data)["data"]
    assert data["type"] == "cardholderBearerToken"
    token = data["attributes"]["token"]

    holder = openapi(token)
    card = api(CardsApi, holder).get_card("30005").data.actual_instance
    assert card.type == "businessDebitCard"
    assert [c.actual_instance.id for c in api(CardsApi, holder).list_cards().data] == ["30005"]
    with pytest.raises(exceptions.ForbiddenException):
        api(CardsApi, holder).get_card("30006")
    pan = requests.get(
        f"{box.url}/cards/30005/secure-data/pan",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()["data"]["attributes"]["pan"]
    assert luhn_valid(pan)

    with pytest.raises(exceptions.BadRequestException) as wrong_code:
        org.create_cardholder_token("30006", request("30006", "cards", code="999999"))
    assert parsed_errors(wrong_code.value)[0].code == "invalid_verification_code"


def test_openapi_sdk_exceptions(box: SandboxProcess, openapi: Any) -> None:
    with pytest.raises(exceptions.UnauthorizedException) as unauthorized:
        api(CardsApi, openapi("v2.public.garbage")).list_cards()
    assert unauthorized.value.status == 401
    assert parsed_errors(unauthorized.value)[0].status == "401"

    narrow = openapi(box.plain_customer_token("10001", "cards"))
    with pytest.raises(exceptions.ForbiddenException) as forbidden:
        api(CustomersApi, narrow).get_customer("10001")
    assert forbidden.value.status == 403
    assert body_of(forbidden.value)["errors"][0]["code"] == "insufficient_scope"

    org = openapi(box.org_token)
    tokens = api(CardHolderAPITokensApi, org)
    verification = tokens.create_cardholder_token_verification(
        "30001",
        model(
            CreateCardholderTokenVerificationRequest,
            {"data": {"type": "cardholderTokenVerification", "attributes": {"channel": "sms"}}},
        ),
    ).data.attributes.verification_token
    with pytest.raises(exceptions.BadRequestException) as bad_request:
        tokens.create_cardholder_token(
            "30001",
            model(
                CreateCardholderTokenRequest,
                {
                    "data": {
                        "type": "cardholderToken",
                        "attributes": {
                            "scope": "cards",
                            "verificationToken": verification,
                            "verificationCode": "000001",
                            "expiresIn": 90000,
                        },
                    }
                },
            ),
        )
    error = parsed_errors(bad_request.value)[0]
    assert error.status == "400" and error.source.pointer == "/data/attributes/expiresIn"

    verify = model(
        CreateCardholderTokenVerificationRequest,
        {"data": {"type": "cardholderTokenVerification", "attributes": {"channel": "call"}}},
    )
    for _ in range(4):  # the fifth, after the one above
        tokens.create_cardholder_token_verification("30001", verify)
    with pytest.raises(exceptions.ApiException) as limited:
        tokens.create_cardholder_token_verification("30001", verify)
    assert limited.value.status == 429
    assert body_of(limited.value)["errors"][0]["status"] == "429"

    with pytest.raises(exceptions.NotFoundException) as missing:
        api(CardsApi, org).get_card("39999")
    assert parsed_errors(missing.value)[0].status == "404"
    with pytest.raises(exceptions.NotFoundException):
        tokens.create_cardholder_token_verification("39999", verify)
