"""No real Unit token reaches a caller that used a placeholder, whatever the path (issue 18,
item 1), through real gateway processes:

- a create-token request whose path servers read in different ways is refused (400) before
  anything reaches Unit, and a spelling every server reads alike is the token endpoint it is
  (the caller gets the placeholder): against a sandbox that reads paths as the most lenient
  server would (``lenient_paths``), by hand and for random spellings (hypothesis);
- whatever a Unit upstream answers a placeholder caller, a Unit token anywhere in the answer
  becomes a placeholder, or the answer is withheld (502): a server of the test's own plays a
  Unit that hands tokens out where no route table expects them;
- a placeholder, however it is spelled, never leaves for another host, and an ambiguous
  ``Authorization`` (repeated, folded, a name with white space) is refused for every host.

Callers speak raw HTTP/1.1 through the proxy, so no client library tidies the request target
or the headers first. Every answer goes to the leak scan.
"""

from __future__ import annotations

import gzip
import json
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GatewayFactory, Planted, address_of, planted_sandbox
from scripted_unit import ScriptedUnit, http_answer
from unit_gateway.testing import harness
from unit_gateway.unit_api import paseto

MARK = b"v2.public."
CUSTOMER = "10001"
CARD = "30001"  # the customer's card in the sandbox's seed data
CUSTOMER_TOKEN = f"/customers/{CUSTOMER}/token"
CARDHOLDER_TOKEN = f"/cards/{CARD}/cardholder/token"
BODIES = {
    CUSTOMER_TOKEN: {"data": {"type": "customerToken", "attributes": {"scope": "customers"}}},
    CARDHOLDER_TOKEN: {"data": {"type": "cardholderToken", "attributes": {"scope": "cards"}}},
}
PLACEHOLDERS = {
    CUSTOMER_TOKEN: f"unitgw:customer:{CUSTOMER}",
    CARDHOLDER_TOKEN: f"unitgw:cardholder:{CARD}",
}
ORG = "Authorization: Bearer unitgw:org\r\n"


# --- raw HTTP/1.1 through the proxy ----------------------------------------------------------


@dataclass
class Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        (error,) = self.json()["errors"]
        assert error["status"] == str(self.status)
        return error["code"]


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [(name.strip(), value.strip()) for name, _, value in (f.partition(b":") for f in lines)]


def parse_answer(raw: bytes) -> Answer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    _, status, reason = [*status_line.split(b" ", 2), b""][:3]
    answer = Answer(int(status), reason, _fields(lines), rest)
    if (answer.header(b"transfer-encoding") or b"").lower() == b"chunked":
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2 :]
        answer.body = body
        answer.trailers = _fields([line for line in rest.split(b"\r\n") if line])
    return answer


def exchange(gateway: harness.Gateway, request: bytes, planted: Planted, label: str) -> bytes:
    """Everything the gateway answers ``request`` (sent with ``Connection: close``), handed to
    the leak scan."""
    received = b""
    with socket.create_connection(address_of(gateway.proxy_url), timeout=20) as conn:
        conn.sendall(request)
        while chunk := conn.recv(65536):
            received += chunk
    planted.blobs.append((label, received))
    return received


def request_bytes(
    url: str, target: str, *, method: str = "POST", headers: str = ORG, body: bytes = b""
) -> bytes:
    """An absolute-form request to ``url`` + ``target`` (the target exactly as given)."""
    host = url.split("://", 1)[1]
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return (
        f"{method} {url}{target} HTTP/1.1\r\nHost: {host}\r\n{headers}"
        f"Content-Type: application/vnd.api+json\r\n{length}Connection: close\r\n\r\n"
    ).encode("utf-8", "surrogateescape") + body


def create_token(
    gateway: harness.Gateway, sandbox: harness.Sandbox, endpoint: str, target: str, planted: Planted
) -> Answer:
    body = json.dumps(BODIES[endpoint]).encode()
    raw = exchange(
        gateway, request_bytes(sandbox.url, target, body=body), planted, f"POST {target!r}"
    )
    assert MARK not in raw, f"{target!r}: the caller got a Unit token"
    return parse_answer(raw)


@pytest.fixture
def lenient_sandbox(sandbox: harness.Sandbox) -> harness.Sandbox:
    """The sandbox reading paths as the most lenient server would: if any server's reading
    of a spelling is a token endpoint, this one's is."""
    sandbox.faults(lenient_paths=True)
    return sandbox


# --- (a) the request target -----------------------------------------------------------------

#: Spellings of the two create-token endpoints that some server reads as that endpoint and
#: another as some other path (or none).
AMBIGUOUS = [
    (CUSTOMER_TOKEN, f"{CUSTOMER_TOKEN}#fragment"),
    (CUSTOMER_TOKEN, f"{CUSTOMER_TOKEN}?#"),
    (CUSTOMER_TOKEN, f"/customers%2F{CUSTOMER}%2Ftoken"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}%2ftoken"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/token%252F..%252F..%252F{CUSTOMER}%252Ftoken"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}%5Ctoken"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}\\token"),
    (CUSTOMER_TOKEN, f"/x/../customers/{CUSTOMER}/token"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/./token"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/%2e/token"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/token/x/%2E%2E"),
    (CUSTOMER_TOKEN, f"/customers//{CUSTOMER}/token"),
    (CUSTOMER_TOKEN, f"//customers/{CUSTOMER}/token"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/token;x=1"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/token."),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/token%00.json"),
    (CUSTOMER_TOKEN, f"/Customers/{CUSTOMER}/token"),
    (CUSTOMER_TOKEN, f"/customers/{CUSTOMER}/TOKEN"),
    (CARDHOLDER_TOKEN, f"/cards/{CARD}/Cardholder/token"),
    (CARDHOLDER_TOKEN, f"/cards/{CARD}%2Fcardholder%2Ftoken"),
    (CARDHOLDER_TOKEN, f"{CARDHOLDER_TOKEN}#"),
    (CARDHOLDER_TOKEN, f"/cards/{CARD}/cardholder//token"),
]
#: Spellings every server that reads them at all reads as the endpoint.
UNAMBIGUOUS = [
    (CUSTOMER_TOKEN, CUSTOMER_TOKEN),
    (CUSTOMER_TOKEN, f"/%63ustomers/{CUSTOMER}/%74%6F%6b%65%6E"),
    (CUSTOMER_TOKEN, "/customers/%31%30%30%30%31/token?x=/../y"),
    (CUSTOMER_TOKEN, f"{CUSTOMER_TOKEN}/"),
    (CARDHOLDER_TOKEN, f"/cards/{CARD}/c%61rdholder/token"),
]


def test_a_target_servers_read_differently_is_refused_before_anything_reaches_unit(
    gateway_factory: GatewayFactory, lenient_sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(lenient_sandbox)
    for endpoint, target in AMBIGUOUS:
        answer = create_token(gateway, lenient_sandbox, endpoint, target, planted)
        assert answer.status == 400, (target, answer)
        assert answer.error_code() == "invalid_request"
        detail = answer.json()["errors"][0]["detail"]
        assert detail.startswith("the gateway could not take this request: "), detail
    assert lenient_sandbox.stats()["total_requests"] == 0, "nothing of them reached Unit"

    for endpoint, target in UNAMBIGUOUS:
        answer = create_token(gateway, lenient_sandbox, endpoint, target, planted)
        assert answer.status == 201, (target, answer)
        assert answer.json()["data"]["attributes"]["token"] == PLACEHOLDERS[endpoint]
    created = lenient_sandbox.stats()["tokens_created"]
    assert (created["customer"], created["cardholder"]) == (4, 1)


def _percent(char: str, upper: bool) -> str:
    return "".join(f"%{b:02X}" if upper else f"%{b:02x}" for b in char.encode())


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A create-token endpoint and a way to write its path: characters percent-encoded or in
    another case, dot segments and empty segments between its segments, ``;params``, a
    leading ``//``, a trailing ``/`` or ``.``, a query and a fragment."""
    endpoint = draw(st.sampled_from([CUSTOMER_TOKEN, CARDHOLDER_TOKEN]))
    out = []
    if draw(st.booleans()):
        out.append(draw(st.sampled_from(["/", "/.", "/%2e", "/x/..", "/%2F"])))
    for segment in endpoint[1:].split("/"):
        out.append(
            draw(
                st.sampled_from(
                    [
                        "/",
                        "/",
                        "/",
                        "//",
                        "%2F",
                        "%2f",
                        "\\",
                        "/./",
                        "/x/../",
                        "/%2E/",
                        "/x/%2e%2E/",
                        "/%5C",
                    ]
                )
            )
        )
        for char in segment:
            how = draw(st.sampled_from(["as is", "as is", "as is", "encoded", "ENCODED", "case"]))
            if how == "case":
                out.append(char.swapcase())
            elif how == "as is":
                out.append(char)
            else:
                out.append(_percent(char, how == "ENCODED"))
        out.append(draw(st.sampled_from(["", "", "", ";x", ".", "%2e", "%00", "%20"])))
    out.append(draw(st.sampled_from(["", "", "/", "//", "/.", "/..", "%2F"])))
    out.append(draw(st.sampled_from(["", "", "?x=1", "?next=/../../x", "?%23"])))
    out.append(draw(st.sampled_from(["", "", "#", "#frag", "#/../x"])))
    return endpoint, "".join(out)


@pytest.mark.timeout(600)
def test_no_spelling_of_a_token_endpoint_gets_a_placeholder_caller_a_token(
    gateway_factory: GatewayFactory, lenient_sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(lenient_sandbox)  # one gateway for every example
    accepted = []

    # 2 cores: each example is a request through two processes.
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(spellings())
    def one(spelling: tuple[str, str]) -> None:
        endpoint, target = spelling
        answer = create_token(gateway, lenient_sandbox, endpoint, target, planted)
        if answer.status == 400:
            assert answer.error_code() == "invalid_request", (target, answer)
            return
        # Accepted: the gateway read the token endpoint, as the most lenient server does.
        assert answer.status == 201, (target, answer)
        assert answer.json()["data"]["attributes"]["token"] == PLACEHOLDERS[endpoint]
        accepted.append(target)

    one()
    assert accepted, "no spelling was accepted: the test would prove nothing of matching"
    # The route table caught every token endpoint itself: the answer check never had to.
    assert "Unit token(s); the caller got" not in gateway.process.output()


# --- (b) whatever Unit answers --------------------------------------------------------------


def unit_token(key: bytes, **claims: Any) -> str:
    return paseto.encode({"exp": "2099-01-01T00:00:00.000Z", "scope": "cards", **claims}, key)


@pytest.fixture
def tokens(planted: Planted) -> dict[str, str]:
    """Unit tokens of each identity kind (and one whose claims name none), planted."""
    key = secrets.token_bytes(32)
    made = {
        "org": unit_token(key, role="org", userId="1"),
        "customer": unit_token(key, role="customer", customerId=CUSTOMER),
        "cardholder": unit_token(key, role="cardholder", cardId=CARD),
        "nobody": unit_token(key, role="auditor"),
    }
    for kind, token in made.items():
        planted.add(f"fake Unit's {kind} token", token)
    return made


@pytest.fixture
def fake_unit(tokens: dict[str, str]) -> Iterator[ScriptedUnit]:
    customer, cardholder, org = tokens["customer"], tokens["cardholder"], tokens["org"]
    big = b'{"data":"' + b"x" * (2 << 20) + b'","t":"' + customer.encode() + b'"}'
    note = json.dumps({"data": {"attributes": {"note": customer, "other": tokens["nobody"]}}})
    escaped = json.dumps({"t": customer.replace(".", "\\u002e")}).replace("\\\\u", "\\u")
    answers = {
        # Replaced by the placeholder of the identity the token's claims name.
        "/plain": http_answer(b'{"data":{"id":"1","type":"card"}}'),
        "/body": http_answer(note.encode()),
        "/header": http_answer(headers=(f"X-Debug-Authorization: Bearer {cardholder}",)),
        "/reason": http_answer(status=f"200 {org}"),
        "/gzip": http_answer(gzip.compress(note.encode()), headers=("Content-Encoding: gzip",)),
        "/large": http_answer(big),
        # Withheld: the gateway cannot check it, or does not rewrite the token's spelling.
        "/unknown-encoding": http_answer(
            note.encode(), headers=("Content-Encoding: x-unit-secret",)
        ),
        "/gzip-bomb": http_answer(gzip.compress(big), headers=("Content-Encoding: gzip",)),
        "/json-escaped": http_answer(escaped.encode()),
        "/utf-16": http_answer(
            note.encode("utf-16-le"), content_type="application/json; charset=utf-16le"
        ),
        "/percent-encoded": http_answer(
            headers=("Link: <https://x.test/?t=" + customer.replace(".", "%2E") + ">",)
        ),
        "/header-name": http_answer(headers=(f"X-{customer}: 1",)),
        # mitmproxy relays what follows a 101 as raw bytes.
        "/switch": (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-unit\r\nConnection: Upgrade\r\n\r\n"
            + customer.encode()
        ),
    }
    fake = ScriptedUnit(answers, org)
    yield fake
    fake.close()


def get(
    gateway: harness.Gateway, url: str, path: str, planted: Planted, headers: str = ORG
) -> Answer:
    raw = exchange(
        gateway, request_bytes(url, path, method="GET", headers=headers), planted, f"GET {path}"
    )
    assert MARK not in raw, f"{path}: the caller got a Unit token"
    return parse_answer(raw)


def test_a_unit_token_anywhere_in_an_answer_becomes_a_placeholder(
    gateway_factory: GatewayFactory, fake_unit: ScriptedUnit, run_dir: Path, planted: Planted
) -> None:
    gateway = gateway_factory(
        fake_unit,
        overrides={"redaction": {"max_body_bytes": 1 << 20}},
        extra_args=("--set", f"save_stream_file={run_dir / 'flows.mitm'}"),
    )
    customer = f"unitgw:customer:{CUSTOMER}".encode()

    plain = get(gateway, fake_unit.url, "/plain", planted)
    assert (plain.status, plain.body) == (200, b'{"data":{"id":"1","type":"card"}}'), "untouched"

    body = get(gateway, fake_unit.url, "/body", planted).json()["data"]["attributes"]
    # Claims that name no identity the gateway has a placeholder for: a marker.
    assert body == {"note": customer.decode(), "other": "unitgw:token-withheld"}

    header = get(gateway, fake_unit.url, "/header", planted)
    assert header.header(b"x-debug-authorization") == f"Bearer unitgw:cardholder:{CARD}".encode()

    reason = get(gateway, fake_unit.url, "/reason", planted)
    assert (reason.status, reason.reason) == (200, b"unitgw:org")

    compressed = get(gateway, fake_unit.url, "/gzip", planted)
    assert compressed.header(b"content-encoding") is None, "sent decoded"
    assert compressed.json()["data"]["attributes"]["note"] == customer.decode()

    # Past the limit for decoding, a body that needs none is searched whole.
    large = get(gateway, fake_unit.url, "/large", planted)
    assert large.status == 200 and large.json()["t"] == customer.decode()
    assert len(large.body) > 2 << 20

    # The same answers to a caller with a token of its own are its business: not tested
    # here, as every answer goes to the leak scan.
    output = gateway.process.output()
    assert "held 1 Unit token(s); the caller got unitgw:org in their place" in output


def test_an_answer_that_cannot_be_checked_or_rewritten_is_withheld(
    gateway_factory: GatewayFactory, fake_unit: ScriptedUnit, run_dir: Path, planted: Planted
) -> None:
    gateway = gateway_factory(
        fake_unit,
        overrides={"redaction": {"max_body_bytes": 1 << 20}},
        extra_args=("--set", f"save_stream_file={run_dir / 'flows.mitm'}"),
    )
    reasons = {
        "/unknown-encoding": "cannot undo its Content-Encoding",
        "/gzip-bomb": "cannot undo its Content-Encoding within 1048576 bytes",
        "/json-escaped": "its body holds a Unit token in JSON \\u escapes",
        "/utf-16": "its body holds a Unit token in UTF-16 or UTF-32",
        "/percent-encoded": "its head holds a Unit token percent-encoded",
        "/header-name": "a header name holds a Unit token",
    }
    for path, reason in reasons.items():
        answer = get(gateway, fake_unit.url, path, planted)
        assert answer.status == 502, (path, answer)
        assert answer.error_code() == "unit_answer_withheld"
        assert reason in answer.json()["errors"][0]["detail"], path
    # After a 101 mitmproxy pipes Unit's bytes: nothing can answer in its place.
    switched = exchange(
        gateway, request_bytes(fake_unit.url, "/switch", method="GET"), planted, "GET /switch"
    )
    assert switched == b"", "the connection is closed without an answer"
    assert fake_unit.paths == [*reasons, "/switch"], "each was Unit's answer, not a refusal"


# --- (c) placeholders in any spelling -------------------------------------------------------


def test_a_placeholder_in_any_spelling_never_leaves_for_another_host(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    # mitmproxy's own check refuses white space in a header name: without it, the gateway's.
    gateway = gateway_factory(sandbox, extra_args=("--set", "validate_inbound_headers=false"))
    spellings = [
        "Authorization: Bearer\tunitgw:org\r\n",
        "Authorization: BEARER UNITGW:ORG\r\n",
        "Authorization: bearer   unitgw:customer:10001 \t\r\n",
        "Authorization: Bearer x, Bearer unitgw:org\r\n",
        "Authorization: Basic unitgw:org\r\n",
        "Authorization: unitgw:org\r\n",
        "authorization: Bearer UnitGW:cardholder:30001\r\n",
    ]
    ambiguous = [
        "Authorization: Bearer x\r\nAuthorization: Bearer unitgw:org\r\n",
        "Authorization: Bearer unitgw:org\r\nauthorization: Bearer x\r\n",
        "Authorization : Bearer unitgw:org\r\n",
        "Authorization\t: Bearer unitgw:org\r\n",
        "Authorization: Bearer\r\n unitgw:org\r\n",
        # Ambiguous whatever it holds: refused for every host.
        "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
    ]
    with planted_sandbox(run_dir, planted, "org token (not Unit)", name="not-unit") as other:
        for headers in spellings:
            answer = get(gateway, other.url, "/cards", planted, headers=headers)
            assert answer.status == 403, (headers, answer)
            assert answer.error_code() == "placeholder_for_unknown_host"
        for headers in ambiguous:
            for host in (other, sandbox):
                answer = get(gateway, host.url, "/cards", planted, headers=headers)
                assert answer.status == 400, (headers, answer)
                assert answer.error_code() == "ambiguous_authorization"
        assert other.stats()["total_requests"] == 0, "nothing reached the other host"
        assert sandbox.stats()["total_requests"] == 0, "nor Unit"


def test_placeholder_spellings_at_unit(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, planted: Planted
) -> None:
    gateway = gateway_factory(sandbox)
    for headers in (
        "Authorization: Bearer\tunitgw:org\r\n",
        "Authorization:  bEaReR \t unitgw:org \r\n",
    ):
        assert get(gateway, sandbox.url, "/cards", planted, headers=headers).status == 200
    for headers in ("Authorization: Bearer UNITGW:ORG\r\n", "Authorization: unitgw:org\r\n"):
        answer = get(gateway, sandbox.url, "/cards", planted, headers=headers)
        assert (answer.status, answer.error_code()) == (401, "invalid_placeholder")
    upgrade = get(
        gateway,
        sandbox.url,
        "/cards",
        planted,
        headers=ORG + "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    assert (upgrade.status, upgrade.error_code()) == (400, "upgrade_refused")
    assert sandbox.stats()["requests"] == {"GET /cards": 2}
