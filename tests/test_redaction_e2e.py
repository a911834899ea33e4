"""No secret in anything the gateway keeps or shows, end to end.

Real gateway processes in front of the local sandbox; Unit's Python SDK and requests as
callers. Every kind of secret the sandbox hands out is planted: the org token, the customer
and cardholder tokens the gateway minted (read back from the sandbox's ``/__sandbox/issued``),
verification tokens, a JWT the caller signs, a PAN from secure-data, SSN, date of birth and
passport from applications, account and routing numbers, the caller's cookie. The outputs:
mitmdump's console at ``flow_detail=4``, ``save_stream_file``, ``hardump``; mitmweb's REST
API, content downloads, export command and ``/updates`` websocket. The fixture's leak scan
looks for every planted value in all of them (as written, JSON-escaped, base64, …).

Not planted: the sandbox OTP ``000001`` and CVV2 (three digits): both too short for a
scanner to tell from any other digits. They are redacted by field name like the rest.

The callers must still get the real values, byte for byte, and Unit the real tokens.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import jwt
import pytest
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from unit import Unit

from conftest import (
    GatewayFactory,
    Planted,
    application,
    jwt_settings,
    planted_sandbox,
    proxied_session,
    sdk,
)
from mitmweb_client import updates_of
from unit_gateway.config.redaction import DEFAULT_MAX_BODY_BYTES
from unit_gateway.testing import harness

CUSTOMER = "10001"  # jwtSubject user|10001 in the sandbox's seed data


def gateway_overrides(run_dir: Path) -> dict[str, Any]:
    return {
        "tokens": {
            "customer": {"two_factor": "jwt"},
            "cardholder": {"two_factor": "sandbox-otp"},
            "jwt": jwt_settings(run_dir),
        }
    }


def direct(sandbox: harness.Sandbox, method: str, path: str, **kwargs: Any) -> requests.Response:
    """The sandbox without the gateway, with the org token: what Unit really serves."""
    with requests.Session() as session:
        session.trust_env = False
        return session.request(
            method,
            sandbox.url + path,
            headers={"Authorization": f"Bearer {sandbox.org_token}", **kwargs.pop("headers", {})},
            timeout=60,
            **kwargs,
        )


def run_traffic(
    gateway: harness.Gateway,
    sandbox: harness.Sandbox,
    planted: Planted,
    key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every kind of secret through the gateway; checks that callers get the real values."""
    # Unit's SDK with placeholders: accounts (account and routing numbers) and cards.
    org = sdk(gateway, sandbox, "unitgw:org", monkeypatch)
    accounts = org.accounts.list().data
    assert accounts
    real_accounts = direct(sandbox, "GET", "/accounts").json()["data"]
    for account, real in zip(accounts, real_accounts, strict=True):
        assert account.attributes["accountNumber"] == real["attributes"]["accountNumber"]
        planted.add(f"account number {account.id}", account.attributes["accountNumber"])
    planted.add("routing number", accounts[0].attributes["routingNumber"])
    customer = Unit(sandbox.url, f"unitgw:customer:{CUSTOMER}")
    card = customer.cards.list().data[0].id

    cookie = planted.add("caller cookie", secrets.token_urlsafe(24))
    with proxied_session(gateway) as session:
        session.headers["Cookie"] = f"session={cookie}"

        def call(method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
            headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
            return session.request(method, sandbox.url + path, headers=headers, **kwargs)

        # PAN through a customer token (jwt two-factor) and a cardholder token (OTP).
        real_pan = direct(sandbox, "GET", f"/cards/{card}/secure-data/pan")
        assert real_pan.status_code == 200, real_pan.text
        pan = real_pan.json()["data"]["attributes"]["pan"]
        planted.add("PAN", pan)
        for placeholder in (f"unitgw:customer:{CUSTOMER}", f"unitgw:cardholder:{card}"):
            answer = call("GET", f"/cards/{card}/secure-data/pan", placeholder)
            assert answer.status_code == 200, answer.text
            assert answer.content == real_pan.content, "the caller gets Unit's bytes"
        cvv = call("GET", f"/cards/{card}/secure-data/cvv2", f"unitgw:cardholder:{card}")
        assert cvv.status_code == 200, cvv.text
        assert cvv.json() == direct(sandbox, "GET", f"/cards/{card}/secure-data/cvv2").json()

        # Applications: SSN and date of birth; passport.
        ssn = planted.add("SSN", f"{secrets.randbelow(10**9):09d}")
        year, month, day = (
            1910 + secrets.randbelow(90),
            1 + secrets.randbelow(9),
            10 + secrets.randbelow(18),
        )
        birth = planted.add("date of birth", f"{year}-0{month}-{day}")
        passport = planted.add("passport", "P" + secrets.token_hex(8).upper())
        for body in (application(ssn, None, birth), application(None, passport, birth)):
            created = call("POST", "/applications", "unitgw:org", json=body)
            assert created.status_code == 201, created.text
            echoed = created.json()["data"]["attributes"]
            assert echoed.get("ssn", echoed.get("passport")) in (ssn, passport)

        # A caller-signed JWT on Unit's own create-token request: the caller gets the
        # placeholder, the sandbox accepted the JWT, the gateway learned the token.
        signed = jwt.encode(
            {"sub": f"user|{CUSTOMER}", "exp": int(time.time()) + 600},
            key,
            algorithm="RS256",
        )
        planted.add("caller JWT", signed)
        token_body = {
            "data": {
                "type": "customerToken",
                "attributes": {"scope": "customers cards", "jwtToken": signed},
            }
        }
        made = call("POST", f"/customers/{CUSTOMER}/token", "unitgw:org", json=token_body)
        assert made.status_code == 201, made.text
        assert made.json()["data"]["attributes"]["token"] == f"unitgw:customer:{CUSTOMER}"

        # A caller's own real token goes through untouched (and is never shown).
        own = direct(sandbox, "POST", f"/customers/{CUSTOMER}/token", json=token_body).json()[
            "data"
        ]["attributes"]["token"]
        mine = call("GET", "/cards", own)
        assert mine.status_code == 200, mine.text

    stats = sandbox.stats()
    assert stats["unauthenticated"] == {}, "every injected token was accepted"
    assert stats["jwt_tokens_accepted"] >= 2
    issued = planted.add_issued(sandbox.url, sandbox.process.name, sandbox.cert_path)
    assert len(issued["tokens"]) >= 3 and issued["verificationTokens"]


def every_output(flows: Path, har: Path) -> tuple[str, ...]:
    """mitmdump options that show each flow whole and save it to ``flows`` and ``har``."""
    return (
        "--set", "flow_detail=4",
        "--set", f"save_stream_file={flows}",
        "--set", f"hardump={har}",
    )  # fmt: skip


def test_mitmdump_outputs_hold_no_secret(
    gateway_factory: GatewayFactory,
    jwt_sandbox: harness.Sandbox,
    jwt_key: rsa.RSAPrivateKey,
    run_dir: Path,
    planted: Planted,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flows, har = run_dir / "flows.out", run_dir / "flows.har"
    overrides = gateway_overrides(run_dir) | {"access_log": {"path": "access.jsonl"}}
    gateway = gateway_factory(
        jwt_sandbox,
        overrides=overrides,
        extra_args=every_output(flows, har),
    )
    run_traffic(gateway, jwt_sandbox, planted, jwt_key, monkeypatch)
    metrics = gateway.metrics_text()
    planted.blobs.append(("/metrics", metrics.encode()))
    assert gateway.process.stop() == 0
    # The outputs are there, with the flows in them (redacted): a scan of nothing finds nothing.
    assert flows.stat().st_size > 10_000
    assert json.loads(har.read_text())["log"]["entries"]
    shown = gateway.process.output()
    assert "secure-data/pan" in shown and "[redacted:pan]" in shown
    assert "unitgw:customer:10001" in shown, "the flow keeps the caller's placeholder"
    assert 'unit_gateway_redactions_total{rule="field:pan"}' in metrics

    # The access log (next to the configuration, in the scanned run directory): one line
    # per flow, route templates, fingerprints of the tokens Unit got.
    lines = [json.loads(line) for line in (run_dir / "access.jsonl").read_text().splitlines()]
    assert len(lines) == 9
    pans = [line for line in lines if line["route"] == "/cards/{cardId}/secure-data/pan"]
    assert [(p["identity"], p["status"]) for p in pans] == [("customer", 200), ("cardholder", 200)]
    assert all(p["token"].startswith("[token …") for p in pans)
    assert pans[0]["token"] != pans[1]["token"]
    assert {line["identity"] for line in lines} == {"org", "customer", "cardholder", "caller"}


def test_mitmweb_holds_no_secret(
    gateway_factory: GatewayFactory,
    jwt_sandbox: harness.Sandbox,
    jwt_key: rsa.RSAPrivateKey,
    run_dir: Path,
    planted: Planted,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web_port = harness.free_port()
    gateway = gateway_factory(
        jwt_sandbox,
        overrides=gateway_overrides(run_dir),
        web=True,
        extra_args=("--set", f"web_port={web_port}", "--set", "web_open_browser=false"),
    )
    web_token = gateway.process.wait_for(r"Web server listening at \S+token=(\w+)").group(1)
    base = f"http://127.0.0.1:{web_port}"
    headers = {"Authorization": f"Bearer {web_token}"}

    with updates_of(base, web_token) as updates:
        run_traffic(gateway, jwt_sandbox, planted, jwt_key, monkeypatch)
    assert len(updates) > 20
    planted.blobs.append(("mitmweb /updates websocket", b"\n".join(updates)))

    with requests.Session() as web:
        web.trust_env = False
        web.headers.update(headers)
        listing = web.get(f"{base}/flows", timeout=10)
        assert listing.status_code == 200
        planted.blobs.append(("mitmweb GET /flows", listing.content))
        flows = listing.json()
        assert len(flows) >= 9  # every request of run_traffic
        # tornado's double-submit check: the same (version 1) token as cookie and header
        xsrf = secrets.token_hex(16)
        xsrf_headers = {"X-XSRFToken": xsrf, "Cookie": f"_mitmproxy_xsrf={xsrf}"}
        for flow in flows:
            fid = flow["id"]
            for part in ("request", "response"):
                if flow.get(part) is None:
                    continue
                got = web.get(f"{base}/flows/{fid}/{part}/content.data", timeout=10)
                planted.blobs.append((f"mitmweb {part} content {fid}", got.content))
            for fmt in ("curl", "httpie", "raw"):
                exported = web.post(
                    f"{base}/commands/export",
                    json={"arguments": [fmt, f"@{fid}"]},
                    headers=xsrf_headers,
                    timeout=10,
                )
                assert exported.status_code == 200, exported.text
                planted.blobs.append((f"mitmweb export {fmt} {fid}", exported.content))
        pan_flows = [f for f in flows if f["request"]["path"].endswith("/secure-data/pan")]
        assert pan_flows
        shown = web.get(f"{base}/flows/{pan_flows[0]['id']}/response/content.data", timeout=10)
        assert b"[redacted:pan]" in shown.content
        assert any(
            value.startswith("Bearer unitgw:")
            for name, value in pan_flows[0]["request"]["headers"]
            if name.lower() == "authorization"
        )

        # The save commands write into the run directory, which the teardown scan reads.
        saved, har = run_dir / "web-saved.flows", run_dir / "web-saved.har"
        for command, path in (("save.file", saved), ("save.har", har)):
            answer = web.post(
                f"{base}/commands/{command}",
                json={"arguments": ["@all", str(path)]},
                headers=xsrf_headers,
                timeout=10,
            )
            assert answer.status_code == 200 and "error" not in answer.json(), answer.text
        assert saved.stat().st_size > 10_000
        assert len(json.loads(har.read_text())["log"]["entries"]) >= 9
        events = web.get(f"{base}/events", timeout=10)
        assert events.status_code == 200 and events.json(), events.text
        planted.blobs.append(("mitmweb GET /events", events.content))


def refusal(sandbox: harness.Sandbox, run_dir: Path, option: str, mode: str | None = None) -> str:
    """What a gateway started with ``--set option`` (and ``mode``) says as it exits."""
    config = harness.write_gateway_config(run_dir / "gateway.yaml", upstream_url=sandbox.url)
    with pytest.raises(harness.ProcessFailed) as refused:
        harness.start_gateway(
            run_dir, config, org_token=sandbox.org_token, mode=mode, extra_args=("--set", option)
        )
    message = str(refused.value)
    assert "exited with" in message
    return message


@pytest.mark.parametrize(
    ("option", "name"),
    [
        ("proxy_debug=true", "proxy_debug"),
        ("stream_large_bodies=1m", "stream_large_bodies"),
        ("modify_body=/ssn/note", "modify_body"),
    ],
)
def test_options_that_bypass_redaction_are_refused(
    sandbox: harness.Sandbox, run_dir: Path, option: str, name: str
) -> None:
    message = refusal(sandbox, run_dir, option)
    assert f"unit-gateway: {name}" in message and "refused" in message


@pytest.mark.parametrize("mode", ["reverse:{upstream}", "transparent"])
def test_proxyauth_is_refused_where_it_would_take_the_authorization_header(
    sandbox: harness.Sandbox, run_dir: Path, mode: str
) -> None:
    # On these listeners proxyauth asks for Basic credentials in Authorization, where the
    # caller's placeholder goes: every Unit client would get mitmproxy's 401 page.
    spec = mode.format(upstream=sandbox.url)
    message = refusal(sandbox, run_dir, "proxyauth=svc:secret", spec)
    assert f"unit-gateway: proxyauth is refused with mode {spec}" in message
    assert "the header that carries the Unit placeholder" in message


def test_reload_rebuilds_the_redactor(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    """A header added to redaction.headers is redacted from the next flow on, no restart."""
    gateway = gateway_factory(sandbox, extra_args=("--set", "flow_detail=2"))
    config = run_dir / "gateway.yaml"
    before = secrets.token_hex(12)
    after = planted.add("X-Partner-Key sent after the reload", secrets.token_hex(12))
    with proxied_session(gateway) as session:

        def send(value: str) -> None:
            answer = session.get(
                sandbox.url + "/cards",
                headers={"Authorization": "Bearer unitgw:org", "X-Partner-Key": value},
            )
            assert answer.status_code == 200

        send(before)
        gateway.process.wait_for(before)  # not a secret yet: shown as sent
        document = yaml.safe_load(config.read_text())
        document["redaction"] = {"headers": ["X-Partner-Key"]}
        time.sleep(0.01)
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        gateway.process.wait_for(r"unit-gateway: configuration \S+ reloaded")
        send(after)
        # (the dumper prints the fingerprint's "…" as \xe2\x80\xa6)
        gateway.process.wait_for(r"X-Partner-Key: \[token \S+?[0-9a-f]{6}\]")
    assert after not in gateway.process.output()


@pytest.mark.parametrize("detail", [0, 1, 2, 3])
def test_every_flow_detail_holds_no_secret(
    gateway_factory: GatewayFactory,
    jwt_sandbox: harness.Sandbox,
    jwt_key: rsa.RSAPrivateKey,
    run_dir: Path,
    planted: Planted,
    monkeypatch: pytest.MonkeyPatch,
    detail: int,
) -> None:
    """The dumper at every other verbosity (4 is above); the scan reads its stdout/stderr."""
    gateway = gateway_factory(
        jwt_sandbox,
        overrides=gateway_overrides(run_dir),
        extra_args=("--set", f"flow_detail={detail}"),
    )
    run_traffic(gateway, jwt_sandbox, planted, jwt_key, monkeypatch)
    assert gateway.process.stop() == 0
    if detail:
        assert "secure-data/pan" in gateway.process.output()


def luhn_pan() -> str:
    """A random 16-digit Visa-shaped card number with a valid Luhn check digit."""
    digits = [4] + [secrets.randbelow(10) for _ in range(14)]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if i % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def random_ssn() -> str:
    """SSN-shaped, in the 9xx area no real SSN uses."""
    return (
        f"9{secrets.randbelow(100):02d}-{secrets.randbelow(100):02d}-{secrets.randbelow(10**4):04d}"
    )


def test_traffic_to_other_hosts_is_redacted_too(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    """A service's other egress through the gateway (here a second sandbox, which is not a
    configured upstream) carries secrets and customer data too: every output shows it
    redacted, while the host gets the real bytes. It gets no token of the gateway's."""
    flows, har = run_dir / "other.flows", run_dir / "other.har"
    gateway = gateway_factory(
        sandbox,
        extra_args=every_output(flows, har),
    )
    pan = planted.add("PAN in a query to another host", luhn_pan())
    ssn = planted.add("SSN in a body to another host", random_ssn())
    api_key = planted.add("token-shaped header", "v2.public." + secrets.token_urlsafe(40))
    with (
        planted_sandbox(run_dir, planted, "org token (not Unit)", name="not-unit") as other,
        proxied_session(gateway) as session,
    ):
        auth = {"Authorization": f"Bearer {other.org_token}", "X-Partner-Token": api_key}
        read = session.get(f"{other.url}/cards?pan={pan}&ssn={ssn}", headers=auth)
        # The host got the real token: the flow holds only its fingerprint.
        assert read.status_code == 200, read.text
        assert read.json()["data"]
        body = {"data": {"type": "note", "attributes": {"ssn": ssn, "note": f"pan {pan}"}}}
        session.post(f"{other.url}/customers/10001/notes", json=body, headers=auth)
        assert other.stats()["total_requests"] == 2, "both reached the host"
    assert gateway.process.stop() == 0
    shown = gateway.process.output()
    assert f"{other.url}/cards?pan=" in shown
    # (the dumper escapes the fingerprint's ellipsis in headers)
    assert "pan=[redacted:pan]" in shown and "Authorization: Bearer [token " in shown
    assert flows.stat().st_size > 1_000
    assert len(json.loads(har.read_text())["log"]["entries"]) == 2


def test_bodies_the_gateway_cannot_parse(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    run_dir: Path,
    planted: Planted,
) -> None:
    """Malformed JSON, invalid UTF-8, a duplicate key and a ~7 MB JSON body with secrets in
    them: the caller gets what Unit answers, the gateway stays up, and no output shows a
    planted value."""
    flows, har = run_dir / "flows.out", run_dir / "flows.har"
    gateway = gateway_factory(
        sandbox,
        extra_args=every_output(flows, har),
    )
    ssn, pan = planted.add("SSN", random_ssn()), planted.add("PAN", luhn_pan())
    keyed = planted.add("SSN under an ssn key", f"9{secrets.randbelow(10**8):08d}")
    middle_pan, end_ssn = (
        planted.add("PAN (middle)", luhn_pan()),
        planted.add("SSN (end)", random_ssn()),
    )
    duplicate_pan = planted.add("PAN under a duplicate key", luhn_pan())
    filler = [{"i": i, "memo": "lorem ipsum dolor sit amet " * 3} for i in range(70_000)]
    filler[len(filler) // 2]["memo"] = f"card {middle_pan} on file"
    large = application(ssn, None, "1990-01-15")
    large["data"]["attributes"]["tags"] = {"memo": f"ssn {end_ssn}"}
    large["data"]["attributes"]["filler"] = filler
    large_body = json.dumps(large).encode()
    # the planted values at the start, the middle and the end of ~7 MB, under the 8 MiB limit
    large_body = large_body[:-3] + f', "last": "{end_ssn}"'.encode() + large_body[-3:]
    assert 6_500_000 < len(large_body) < DEFAULT_MAX_BODY_BYTES
    # bytes UTF-8 never has, a broken two-byte sequence, a stray continuation, a surrogate
    invalid_utf8 = b'{"data": "\xff\xfe%s\xc3\x28", "x": "\x80%s\xed\xa0\x80"}' % (
        pan.encode(),
        ssn.encode(),
    )
    bodies = {
        "malformed JSON": (
            f'{{"data": {{"type": "individualApplication", "attributes": {{"ssn":"{keyed}", '
            f'"note": "ssn {ssn} on file", "dateOfBirth": '
        ).encode(),
        "invalid UTF-8": invalid_utf8,
        "7 MB JSON": large_body,
        # The parser keeps the last of two equal keys; the first one's value was never seen.
        "duplicate key": (
            b'{"data": {"type": "individualApplication", "attributes": '
            b'{"memo": "%s", "memo": "ok"}}}' % duplicate_pan.encode()
        ),
    }
    headers = {"Content-Type": "application/json"}
    # The sandbox answers 400 to the first two and 413 to the large one (it takes
    # 1 MB at most); whatever Unit answers, the caller must get the same.
    with proxied_session(gateway) as session:
        for label, body in bodies.items():
            real = direct(sandbox, "POST", "/applications", data=body, headers=headers)
            got = session.post(
                sandbox.url + "/applications",
                data=body,
                headers={**headers, "Authorization": "Bearer unitgw:org"},
                timeout=60,
            )
            assert got.status_code == real.status_code, (label, got.text[:500])
            assert gateway.process.proc is not None and gateway.process.proc.poll() is None
        after = session.get(sandbox.url + "/cards", headers={"Authorization": "Bearer unitgw:org"})
        assert after.status_code == 200, "the gateway still serves"
    assert gateway.process.stop() == 0
    shown = gateway.process.output()
    assert "[redacted:ssn]" in shown and "[redacted:card_number]" in shown
    # the large body was kept (redacted), not dropped
    assert flows.stat().st_size > 6_000_000
    assert len(json.loads(har.read_text())["log"]["entries"]) == 5


def test_a_streamed_request_body(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    run_dir: Path,
    planted: Planted,
) -> None:
    """A body the caller streams (Transfer-Encoding: chunked) is read whole, redacted in what
    is kept, and reaches Unit intact: Unit creates the application with the real values."""
    flows = run_dir / "streamed.out"
    gateway = gateway_factory(
        sandbox,
        name="streamed",
        extra_args=("--set", "flow_detail=4", "--set", f"save_stream_file={flows}"),
    )
    ssn, passport = (
        planted.add("SSN (streamed)", f"9{secrets.randbelow(10**8):08d}"),
        planted.add("passport (streamed)", f"P{secrets.randbelow(10**9):09d}"),
    )
    body = json.dumps(application(ssn, passport, "1988-08-08")).encode()

    def chunks() -> Any:
        for start in range(0, len(body), 97):
            yield body[start : start + 97]

    with proxied_session(gateway) as session:
        created = session.post(
            sandbox.url + "/applications",
            data=chunks(),
            headers={
                "Authorization": "Bearer unitgw:org",
                "Content-Type": "application/vnd.api+json",
            },
            timeout=30,
        )
    assert created.status_code == 201, created.text[:300]
    assert "chunked" in (created.request.headers.get("Transfer-Encoding") or "")
    application_id = created.json()["data"]["id"]
    stored = direct(sandbox, "GET", f"/applications/{application_id}").json()
    assert stored["data"]["attributes"]["ssn"] == ssn, "Unit got the real value"
    assert gateway.process.stop() == 0
    assert flows.stat().st_size > 0


class _Echo(BaseHTTPRequestHandler):
    """Answers a POST with its own body and Content-Type: the caller's bytes as the host got
    them, in the flow's response as well as its request."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", self.headers["Content-Type"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # stderr of the test process is not an output of the run


@contextmanager
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_bodies_a_viewer_reads_otherwise(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    """Bodies whose bytes are not in the charset they declare, whose secrets are escaped or
    split by characters that show as nothing, or sit in UTF-16 outside a multipart's parts:
    no output of the run shows a planted value, in any encoding or spelling the leak scan
    reads (UTF-16, EBCDIC, escapes resolved, invisible characters dropped). The host and the
    caller get the bytes as sent: the host echoes them."""
    flows, har = run_dir / "charsets.flows", run_dir / "charsets.har"
    gateway = gateway_factory(sandbox, extra_args=every_output(flows, har))
    token = planted.add("token-shaped value", "v2.public." + secrets.token_urlsafe(48))
    pan = planted.add("PAN", luhn_pan())
    ssn = planted.add("SSN", random_ssn())
    note = f"token {token} card {pan} ssn {ssn}"
    escaped_pan = pan[:5] + f"\\u{ord(pan[5]):04x}" + pan[6:]
    utf7_pan = "+" + base64.b64encode(pan.encode("utf-16-be")).decode().rstrip("=") + "-"
    part = b'--b7\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b7--\r\n'
    bodies = {
        "ASCII said to be UTF-16": ("text/plain; charset=utf-16", note.encode()),
        "a form said to be UTF-32": (
            "application/x-www-form-urlencoded; charset=utf-32",
            f"note={quote_plus(note)}&x=1".encode(),
        ),
        "ASCII said to be EBCDIC": ("text/plain; charset=cp037", note.encode()),
        "EBCDIC said to be EBCDIC": ("text/plain; charset=cp037", note.encode("cp037")),
        "JSON escapes in JSON that does not parse": (
            "application/json",
            f'{{"t": "{token.replace(".", "\\u002e")}", "c": "{escaped_pan}", oops'.encode(),
        ),
        "HTML character references": (
            "text/plain",
            f"card {pan[:4]}&#32;{pan[4:]} token {token.replace('.', '&#46;')}".encode(),
        ),
        "a zero-width space, an en dash": (
            "text/plain; charset=utf-8",
            f"card {pan[:6]}\u200b{pan[6:]} ssn {ssn.replace('-', '\u2013')}".encode(),
        ),
        "fullwidth digits": ("text/plain", "".join(chr(ord(c) + 0xFEE0) for c in pan).encode()),
        "UTF-16 outside the parts": (
            "multipart/form-data; boundary=b7",
            f"{token} {pan}".encode("utf-16-le") + b"\r\n" + part,
        ),
        "JSON that is UTF-7 by its charset": (
            "application/json; charset=utf-7",
            json.dumps({"note": f"card {utf7_pan}"}).encode(),
        ),
        "a charset nobody knows": ("text/plain; charset=x-private", note.encode()),
    }
    with echo_server() as host, proxied_session(gateway) as session:
        for label, (content_type, body) in bodies.items():
            answer = session.post(
                f"{host}/notes", data=body, headers={"Content-Type": content_type}, timeout=30
            )
            assert answer.status_code == 200, (label, answer.text[:300])
            assert answer.content == body, f"{label}: the caller gets the host's bytes"
    assert gateway.process.stop() == 0
    shown = gateway.process.output()
    assert "[redacted:card_number]" in shown and "charset not readable" in shown
    assert len(json.loads(har.read_text())["log"]["entries"]) == len(bodies)
