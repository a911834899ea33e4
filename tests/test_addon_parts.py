"""Parts of the gateway's addons driven without a proxy: the JSON:API answer that replaces
mitmproxy's HTML error page on a flow to Unit (the outage case end to end is in
test_tokens_e2e.py) and before any flow exists (end to end in test_malformed_e2e.py),
header redaction with fields kept for mitmproxy's proxyauth, the token addon's refusal when
it fails internally, a configuration set as an option, and which listeners proxyauth may
guard."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http
from mitmproxy import flow as flow_module
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.connection import Server
from mitmproxy.hooks import DoneHook, RunningHook
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import http as httplayer
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.test import taddons, tflow

from conftest import ADDONS_ORG_TOKEN, gateway_addons, unit_config
from unit_gateway.config import schema as config
from unit_gateway.config.core import GatewayCore
from unit_gateway.config.redaction import RedactionSettings
from unit_gateway.config.schema import Upstream
from unit_gateway.flows import open_record
from unit_gateway.metrics.exporter import MetricsExporter
from unit_gateway.mitm.stream_errors import _json_api_error
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.redaction.engine import Redactor
from unit_gateway.redaction.proxy_auth import _PROXY_CREDENTIALS, _check_proxyauth_modes
from unit_gateway.redaction.secrets import _SECRETS, HeaderSubstitutions
from unit_gateway.redaction.wire import _wire_fields
from unit_gateway.tokens.addon import TokenInjector
from unit_gateway.tokens.cache import CachedToken
from unit_gateway.tokens.errors import TokenError
from unit_gateway.tokens.flow_state import FlowState
from unit_gateway.tokens.two_factor import Challenge
from unit_gateway.unit_api.identity import Identity

TOKEN = ADDONS_ORG_TOKEN
CUSTOMER = Identity("customer", "10001")


def a_bug(*args: Any) -> None:
    """Stands in for gateway code that fails."""
    raise RuntimeError("a bug")


def answer(code: httplayer.ErrorCode, message: str, *, unit: bool = True) -> http.Response | None:
    event = httplayer.ResponseProtocolError(1, message, code)
    return _json_api_error(event, tflow.tflow(), FlowRedaction(GatewayCore()), unit=unit)


def document(response: http.Response | None) -> tuple[int, dict]:
    assert response is not None
    return response.status_code, json.loads(response.content or b"")


def test_bytes_of_the_peer_quoted_in_the_message_are_redacted() -> None:
    # mitmproxy quotes what the server sent when it cannot parse it.
    status, body = document(
        answer(
            httplayer.ErrorCode.GENERIC_SERVER_ERROR,
            f"unexpected server response: b'Authorization: Bearer {TOKEN}'",
        )
    )
    error = body["errors"][0]
    assert (status, error["code"]) == (502, "upstream_failed")
    assert TOKEN not in json.dumps(body)
    assert "unexpected server response" in error["detail"]
    assert "(Unit)" in error["detail"]


def test_units_bytes_are_not_quoted_to_the_caller() -> None:
    # No redaction finds a token spelled with an escape after its prefix: Unit's bytes go.
    hidden = "v2.public.\\\\u0065" + TOKEN.split(".", 2)[2][1:]
    _, body = document(
        answer(
            httplayer.ErrorCode.GENERIC_SERVER_ERROR,
            f"Cannot parse HTTP response: Invalid header line: b'{hidden}'",
        )
    )
    detail = body["errors"][0]["detail"]
    assert detail.endswith("Invalid header line: [Unit's bytes not shown]"), detail


@pytest.mark.parametrize(
    ("code", "status", "json_code", "names_unit"),
    [
        (httplayer.ErrorCode.CONNECT_FAILED, 502, "upstream_unreachable", True),
        (httplayer.ErrorCode.RESPONSE_TOO_LARGE, 502, "upstream_failed", True),
        (httplayer.ErrorCode.REQUEST_VALIDATION_FAILED, 400, "invalid_request", False),
        (httplayer.ErrorCode.REQUEST_TOO_LARGE, 413, "request_too_large", False),
    ],
)
def test_each_failure_says_whose_it_is(
    code: httplayer.ErrorCode, status: int, json_code: str, names_unit: bool
) -> None:
    got, body = document(answer(code, "the reason"))
    error = body["errors"][0]
    assert (got, error["code"], error["status"]) == (status, json_code, str(status))
    assert error["detail"].endswith("the reason")
    assert ("(Unit)" in error["detail"]) is names_unit


def test_another_hosts_failure_is_json_api_too_and_not_blamed_on_unit() -> None:
    got, body = document(
        answer(
            httplayer.ErrorCode.GENERIC_SERVER_ERROR,
            f"unexpected server response: b'Authorization: Bearer {TOKEN}'",
            unit=False,
        )
    )
    error = body["errors"][0]
    assert (got, error["code"]) == (502, "upstream_failed")
    assert error["detail"].startswith("address:22: unexpected server response")
    assert "(Unit)" not in error["detail"] and TOKEN not in json.dumps(body)


@pytest.mark.parametrize(
    "code",
    [httplayer.ErrorCode.KILL, httplayer.ErrorCode.HTTP_1_1_REQUIRED, httplayer.ErrorCode.CANCEL],
)
def test_failures_mitmproxy_answers_without_a_response_pass_unchanged(
    code: httplayer.ErrorCode,
) -> None:
    assert answer(code, "killed") is None


def test_a_request_no_flow_holds_gets_a_redacted_json_api_error_while_the_addon_runs() -> None:
    # mitmproxy answers a request line or header that does not parse before any flow exists,
    # with an HTML page that quotes the bytes.
    redaction = FlowRedaction(GatewayCore())
    with taddons.context(redaction):
        page = _http1.make_error_response(400, f"Invalid header line: b'Bearer {TOKEN}'")
        redaction.done()
    head, body = page.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Type: application/vnd.api+json" in head and b"Connection: close" in head
    error = json.loads(body)["errors"][0]
    assert (error["status"], error["code"]) == ("400", "invalid_request")
    assert error["detail"].startswith("the gateway could not take this request: Invalid header")
    assert TOKEN not in body.decode()
    # Once the addon is done, the page is mitmproxy's own again.
    assert b"Content-Type: text/html" in _http1.make_error_response(400, "a reason")


def test_kept_proxy_credentials_are_neither_redacted_nor_counted() -> None:
    # Kept for proxyauth (removed later in requestheaders): they used to send every request
    # down the slow path and count a "header" redaction that never happened.
    redaction = FlowRedaction(GatewayCore())
    counted: list[dict[str, int]] = []
    redaction.count = lambda counts: counted.append(dict(counts))  # type: ignore[method-assign]
    fields = (
        (b"Host", b"api.s.unit.sh"),
        (b"Proxy-Authorization", b"Basic dXNlcjpwYXNz"),
        (b"Authorization", b"Bearer unitgw:org"),
    )
    headers = http.Headers(fields)
    substitutions: HeaderSubstitutions = {}
    redaction.redact_headers(headers, substitutions, keep=_PROXY_CREDENTIALS)
    assert headers.fields == fields
    assert (substitutions, counted) == ({}, [])

    # Beside a real secret, the kept field stays and only the secret is redacted and counted.
    fields = (*fields, (b"Cookie", b"session=abc123"))
    headers = http.Headers(fields)
    redaction.redact_headers(headers, substitutions, keep=_PROXY_CREDENTIALS)
    assert headers.fields[:3] == fields[:3]
    assert headers.fields[3] != fields[3]
    assert substitutions == {b"cookie": {headers.fields[3][1]: [b"session=abc123"]}}
    assert counted == [{"header": 1}]


def test_an_internal_failure_is_refused_with_its_step_and_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # mitmproxy would forward a request whose hook raised: the token addon refuses it instead.
    core = GatewayCore()
    tokens = TokenInjector(core, None, FlowRedaction(core))  # type: ignore[arg-type]
    core.config = object()  # type: ignore[assignment]
    tokens.service = object()  # type: ignore[assignment]

    def broken(flow: http.HTTPFlow) -> None:
        raise KeyError("x")

    tokens._route_request = broken  # type: ignore[method-assign]
    flow = tflow.tflow()
    flow.request.headers["Authorization"] = f"Bearer {TOKEN}"
    assert tokens.requestheaders(flow) is None
    assert flow.response is not None and flow.response.status_code == 500
    error = json.loads(flow.response.content or b"")["errors"][0]
    assert error["code"] == "gateway_internal_error"
    assert "choosing the token" in error["detail"]
    assert "KeyError" in error["detail"] and "not forwarded" in error["detail"]
    assert TOKEN not in error["detail"]
    assert "Traceback" in caplog.text or "KeyError" in caplog.text


async def test_a_configuration_set_as_an_option_at_run_time_is_taken_up_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``--set unit_gateway_config=…`` while running (mitmweb's options, say): every addon
    # takes the new file up through the core's listeners, once; the addons' own configure
    # hooks used to build it all a second time.
    first = unit_config(tmp_path / "first.yaml", monkeypatch)
    second = unit_config(
        tmp_path / "second.yaml", monkeypatch, redaction={"headers": ["X-Partner-Key"]}
    )
    built: list[RedactionSettings] = []
    original = Redactor.__init__

    def counting(self: Redactor, settings: RedactionSettings | None = None, **kwargs: Any) -> None:
        built.append(settings or RedactionSettings())
        original(self, settings, **kwargs)

    monkeypatch.setattr(Redactor, "__init__", counting)
    metrics, core, redaction, tokens = gateway_addons()
    exporter = MetricsExporter(core, metrics, redaction)
    built.clear()  # the defaults FlowRedaction starts with
    with taddons.context(core, redaction, tokens, exporter) as tctx:
        tctx.configure(core, unit_gateway_config=str(first))
        assert [s.headers for s in built] == [[]]
        await tctx.master.addons.trigger_event(RunningHook())
        try:
            routes = tokens.routes
            built.clear()
            tctx.configure(core, unit_gateway_config=str(second))
            assert [s.headers for s in built] == [["X-Partner-Key"]]
            assert redaction.redactor.settings.headers == ["X-Partner-Key"]
            assert tokens.routes is not routes
            reloads = metrics.registry.get_sample_value(
                "unit_gateway_config_reloads_total", {"outcome": "ok"}
            )
            assert reloads == 1
            # Each redaction rule has its series from the start, the new header's included.
            assert (
                metrics.registry.get_sample_value(
                    "unit_gateway_redactions_total", {"rule": "header"}
                )
                == 0
            )
        finally:
            await tctx.master.addons.trigger_event(DoneHook())


@pytest.mark.parametrize(
    "modes",
    [["regular"], ["socks5"], ["upstream:http://proxy.internal:8080"], ["regular", "dns"]],
)
def test_proxyauth_is_allowed_with_proxy_listeners(modes: list[str]) -> None:
    _check_proxyauth_modes(modes)


@pytest.mark.parametrize(
    "mode", ["reverse:https://api.s.unit.sh", "transparent", "local", "wireguard", "tun"]
)
def test_proxyauth_is_refused_where_it_takes_authorization(mode: str) -> None:
    with pytest.raises(exceptions.OptionsError, match=f"proxyauth is refused with mode {mode}"):
        _check_proxyauth_modes(["regular", mode])


def test_an_invalid_mode_is_an_options_error() -> None:
    with pytest.raises(exceptions.OptionsError, match="invalid mode 'nonsense'"):
        _check_proxyauth_modes(["nonsense"])


def test_a_listener_that_fails_does_not_keep_the_configuration_from_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = unit_config(tmp_path / "gateway.yaml", monkeypatch)
    core = GatewayCore()
    taken: list[Path | None] = []

    def failing(config: Any) -> None:
        raise RuntimeError("an addon's bug")

    core.listeners += [failing, lambda config: taken.append(config.path)]
    with taddons.context(core) as tctx:
        tctx.configure(core, unit_gateway_config=str(path))
    assert taken == [path]
    assert f"applying configuration {path} failed" in caplog.text
    assert "an addon's bug" in caplog.text


async def test_the_file_watch_outlives_a_reload_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = unit_config(tmp_path / "gateway.yaml", monkeypatch)
    core = GatewayCore()
    with taddons.context(core) as tctx:
        tctx.configure(core, unit_gateway_config=str(path))
        load = config.load
        failures = ["a bug while loading"]

        def failing_once(where: Path) -> Any:
            if failures:
                raise RuntimeError(failures.pop())
            return load(where)

        monkeypatch.setattr(config, "load", failing_once)
        watch = asyncio.ensure_future(core._watch(every=0.01))

        async def until(done: Callable[[], bool]) -> None:
            for _ in range(500):
                if done():
                    return
                await asyncio.sleep(0.01)

        def headers() -> list[str]:
            assert core.config is not None
            return core.config.model.redaction.headers

        try:
            unit_config(path, monkeypatch, redaction={"headers": ["X-First"]})
            await until(lambda: "reloading" in caplog.text)
            assert f"reloading {path} failed" in caplog.text
            # The watch goes on: the next change applies.
            unit_config(path, monkeypatch, redaction={"headers": ["X-Second"]})
            await until(lambda: headers() == ["X-Second"])
            assert headers() == ["X-Second"]
        finally:
            watch.cancel()


def test_a_real_body_the_gateway_reads_is_decoded_only_so_far() -> None:
    # A token request (the one body kind the gateway reads itself) is well under a kilobyte;
    # 16 KiB of gzip that decodes to 16 MiB is not one, and must not be decoded on the loop.
    flow = tflow.tflow()
    redaction = FlowRedaction(GatewayCore())
    token_request = b'{"data": {"attributes": {"scope": "cards"}}}'
    flow.request.headers["Content-Encoding"] = "gzip"
    flow.request.raw_content = gzip.compress(token_request)
    assert redaction.real_request_content(flow) == token_request
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    flow.request.raw_content = bomb.compress(b" " * (16 << 20)) + bomb.flush()
    assert len(flow.request.raw_content) < 64 << 10
    assert redaction.real_request_content(flow) is None
    flow.request.headers["Content-Encoding"] = "x-unknown"
    assert redaction.real_request_content(flow) is None


def test_repeated_headers_that_redact_alike_each_get_their_own_real_value() -> None:
    # Two fields of one name can redact to the same marker; the wire must still carry each
    # field's own value, in order (it used to carry the last one twice).
    redaction = FlowRedaction(GatewayCore())
    headers = http.Headers([(b"X-Data", b"900-12-3456"), (b"X-Data", b"900-65-4321")])
    substitutions: HeaderSubstitutions = {}
    redaction.redact_headers(headers, substitutions)
    assert headers.fields == ((b"X-Data", b"[redacted:ssn]"), (b"X-Data", b"[redacted:ssn]"))
    assert _wire_fields(headers.fields, substitutions) == (
        (b"X-Data", b"900-12-3456"),
        (b"X-Data", b"900-65-4321"),
    )
    flow = tflow.tflow()
    flow.request.headers = headers
    secrets = redaction.secrets(flow)
    secrets.request_headers = substitutions
    assert redaction.real_request_header(flow, "X-Data") == "900-12-3456, 900-65-4321"


@dataclass
class TokenRequest:
    tokens: TokenInjector
    redaction: FlowRedaction
    flow: http.HTTPFlow
    upstream: Upstream


@asynccontextmanager
async def placeholder_token_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learnable_scopes: frozenset[str] | None
) -> AsyncIterator[TokenRequest]:
    """Running addons and a flow in which a caller with a customer placeholder asked Unit for
    a token; the test sets Unit's answer."""
    path = unit_config(tmp_path / "gateway.yaml", monkeypatch)
    _, core, redaction, tokens = gateway_addons()
    with taddons.context(core, redaction, tokens) as tctx:
        tctx.configure(core, unit_gateway_config=str(path))
        await tctx.master.addons.trigger_event(RunningHook())
        try:
            assert core.config is not None and tokens.service is not None
            upstream = core.config.model.unit.upstreams[0]
            flow = tflow.tflow(resp=True)
            tokens._flows[flow] = FlowState(
                upstream,
                open_record(flow, upstream.environment),
                placeholder_caller=True,
                token_identity=CUSTOMER,
                learnable_scopes=learnable_scopes,
            )
            yield TokenRequest(tokens, redaction, flow, upstream)
        finally:
            await tctx.master.addons.trigger_event(DoneHook())


async def test_a_token_answer_the_gateway_cannot_read_is_not_passed_to_a_placeholder_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It might hold the real token, and a caller with a placeholder must never get one.
    async with placeholder_token_request(tmp_path, monkeypatch, None) as request:
        unreadable = json.dumps({"data": {"attributes": {"token": TOKEN}}}).encode()
        request.flow.response = http.Response.make(201)
        request.flow.response.headers["Content-Encoding"] = "x-unknown-coding"
        request.flow.response.raw_content = unreadable
        assert request.tokens.response(request.flow) is None
        assert request.flow.response.status_code == 502
        assert TOKEN.encode() not in (request.redaction.real_response_content(request.flow) or b"")
        assert request.flow.response.json()["errors"][0]["code"] == "token_answer_unreadable"


@pytest.mark.parametrize("failure", ["expiresIn no number", "internal error"])
async def test_a_placeholder_caller_never_gets_the_token_when_taking_it_up_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    scopes = frozenset({"accounts"})
    async with placeholder_token_request(tmp_path, monkeypatch, scopes) as request:
        assert request.tokens.service is not None
        expires_in: Any = "soon" if failure == "expiresIn no number" else 3600
        answer = {"data": {"attributes": {"token": TOKEN, "expiresIn": expires_in}}}
        request.flow.response = http.Response.make(201, json.dumps(answer).encode())
        if failure == "internal error":
            monkeypatch.setattr(request.tokens.service, "learn", a_bug)
        assert request.tokens.response(request.flow) is None
        real = request.redaction.real_response_content(request.flow) or b""
        assert TOKEN.encode() not in real
        if failure == "internal error":
            assert request.flow.response.status_code == 500
            error = request.flow.response.json()["errors"][0]
            assert error["code"] == "gateway_internal_error"
            assert "taking up Unit's new token" in error["detail"]
            assert "(RuntimeError); Unit's answer is not passed on" in error["detail"]
        else:  # the caller gets its placeholder; only the caching is left out
            assert request.flow.response.status_code == 201
            attributes = json.loads(real)["data"]["attributes"]
            assert attributes["token"] == CUSTOMER.placeholder
            assert request.tokens.service.cached(CUSTOMER, scopes, request.upstream) is None


@contextmanager
def transparent_stream() -> Iterator[httplayer.HttpStream]:
    """mitmproxy's stream of one request in transparent mode to Unit, with the gateway's
    addons loaded (done at the end, which takes the patch point out again)."""
    _, core, redaction, _ = gateway_addons()
    with taddons.context(Proxyserver(), core, redaction) as tctx:
        context = Context(tflow.tclient_conn(), tctx.options)
        context.server = Server(address=("api.s.unit.sh", 443))
        httplayer.HttpLayer(context, httplayer.HTTPMode.transparent)
        stream = httplayer.HttpStream(context.fork(), 1)
        list(stream.handle_event(events.Start()))
        yield stream
        tctx.master.addons.trigger(DoneHook())


def test_a_flow_cut_off_before_its_response_leaves_no_real_values() -> None:
    """The side table lets a flow's real values go when its stream ends, not only after a
    response: mitmweb keeps a failed flow, and the real values must not stay with it."""
    with transparent_stream() as stream:
        (hook,) = stream.handle_event(httplayer.RequestHeaders(1, tflow.treq(), False))
        flow = stream.flow
        assert flow in _SECRETS
        assert list(stream.handle_event(events.HookCompleted(hook))) == []
        # The caller goes away while its request body is still coming.
        gone = httplayer.RequestProtocolError(
            1, "client disconnected", httplayer.ErrorCode.CLIENT_DISCONNECTED
        )
        (error_hook,) = stream.handle_event(gone)
        assert list(stream.handle_event(events.HookCompleted(error_hook))) == [
            httplayer.DropStream(1)
        ]
        assert flow.error is not None and flow not in _SECRETS


def test_done_leaves_the_patch_point_as_mitmproxy_has_it() -> None:
    stream_event = httplayer.HttpStream.handle_event
    layer_event = httplayer.HttpLayer._handle_event
    with transparent_stream():
        assert httplayer.HttpStream.handle_event is not stream_event
        assert httplayer.HttpLayer._handle_event is not layer_event
    assert httplayer.HttpStream.handle_event is stream_event
    assert httplayer.HttpLayer._handle_event is layer_event
    assert "handle_event" not in httplayer.HttpStream.__dict__, "inherited, as in mitmproxy"


def test_a_connect_flow_refused_by_mitmproxy_gets_json_api_too() -> None:
    """A CONNECT flow holds no secrets, but mitmproxy's answer to one it refuses is its HTML
    page all the same (over HTTP/2 and /3 it would quote the message unredacted)."""
    with transparent_stream() as stream:
        connect = tflow.treq(method=b"CONNECT", path=b"api.s.unit.sh:443")
        (hook,) = stream.handle_event(httplayer.RequestHeaders(1, connect, True))
        assert stream.flow not in _SECRETS
        (error_hook,) = stream.handle_event(events.HookCompleted(hook))
        written, close, *_ = stream.handle_event(events.HookCompleted(error_hook))
        # HTTP/1: written where mitmproxy writes its page, the connection closed after it
        assert isinstance(written, commands.SendData)
        assert isinstance(close, commands.CloseConnection)
        head, content = written.data.split(b"\r\n\r\n", 1)
        status, body = int(head.split()[1]), json.loads(content)
        error = body["errors"][0]
        assert (status, error["code"]) == (400, "invalid_request")
        assert "CONNECT request even though it is not running in regular" in error["detail"]


def unit_refuses_a_challenge_code_quoting_the_verification_token(request: TokenRequest) -> None:
    """The flow completes challenge ``unitgw-challenge-abc`` (the gateway sent Unit the real
    verification token ``vt-REAL-123`` in its place), and Unit's refusal quotes that token."""
    state = request.tokens._flows[request.flow]
    state.challenge_id, state.verification_token = "unitgw-challenge-abc", "vt-REAL-123"
    refusal = {"errors": [{"status": "400", "detail": "bad code for vt-REAL-123"}]}
    request.flow.response = http.Response.make(400, json.dumps(refusal).encode())


async def test_unit_refusing_a_challenge_code_never_shows_the_caller_the_verification_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller sent the challenge id; the gateway sent Unit the real verification token in
    # its place. Should Unit's refusal quote it, the caller sees the challenge id instead.
    async with placeholder_token_request(tmp_path, monkeypatch, None) as request:
        unit_refuses_a_challenge_code_quoting_the_verification_token(request)
        assert request.tokens.response(request.flow) is None
        real = request.redaction.real_response_content(request.flow) or b""
        assert b"vt-REAL-123" not in real and b"vt-REAL-123" not in request.flow.response.content
        assert json.loads(real)["errors"][0]["detail"] == "bad code for unitgw-challenge-abc"


async def test_a_bug_while_ending_a_challenge_answers_500_and_never_the_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chain would log the failure and pass Unit's refusal on, with the real verification
    # token it quotes.
    async with placeholder_token_request(tmp_path, monkeypatch, None) as request:
        monkeypatch.setattr(request.tokens.token_requests, "_hide_verification_token", a_bug)
        unit_refuses_a_challenge_code_quoting_the_verification_token(request)
        assert request.tokens.response(request.flow) is None
        real = request.redaction.real_response_content(request.flow) or b""
        assert b"vt-REAL-123" not in real
        assert request.flow.response.status_code == 500
        error = json.loads(real)["errors"][0]
        assert error["code"] == "gateway_internal_error"
        assert "failed ending the challenge" in error["detail"]


async def test_a_bug_while_reading_a_token_request_refuses_it_and_keeps_no_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Completing a challenge, the gateway writes the real verification token into the request
    # and then redacts it: should that fail, the request goes nowhere and the flow keeps none.
    async with placeholder_token_request(tmp_path, monkeypatch, None) as request:
        assert request.tokens.service is not None
        challenge_id = "unitgw-challenge-abc"
        request.tokens.service.challenges[challenge_id] = Challenge(
            CUSTOMER, frozenset({"cards-sensitive"}), "vt-REAL-123", time.monotonic()
        )
        attributes = {"verificationToken": challenge_id, "verificationCode": "000001"}
        flow = request.flow
        flow.response = None
        flow.request.content = json.dumps({"data": {"attributes": attributes}}).encode()

        monkeypatch.setattr(request.redaction, "redact_body", a_bug)
        completing = request.tokens.request(flow)  # the challenge is looked up: it waits
        assert completing is not None
        await completing
        assert flow.response is not None and flow.response.status_code == 500
        error = json.loads(flow.response.content or b"")["errors"][0]
        assert error["code"] == "gateway_internal_error"
        assert "failed reading the token request" in error["detail"]
        assert "not forwarded" in error["detail"]
        assert not flow.request.content


async def test_a_bug_while_retrying_answers_500_not_units_401(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with placeholder_token_request(tmp_path, monkeypatch, None) as request:
        state = request.tokens._flows[request.flow]
        state.token_identity = None  # an ordinary request to Unit, with an injected token
        now = time.monotonic()
        state.token = CachedToken(CUSTOMER, frozenset({"cards"}), now + 600, now + 300, value=TOKEN)

        async def broken(*args: Any) -> None:
            raise KeyError("the upstream went away in a reload")

        monkeypatch.setattr(request.tokens, "_retry", broken)
        request.flow.response = http.Response.make(401, b'{"errors": []}')
        retrying = request.tokens.response(request.flow)
        assert retrying is not None
        await retrying
        assert request.flow.response.status_code == 500
        error = request.flow.response.json()["errors"][0]
        assert error["code"] == "gateway_internal_error"
        assert "failed retrying with a new token" in error["detail"]
        assert "(KeyError); Unit's first answer (401) is not passed on" in error["detail"]


def test_a_token_error_quoting_a_token_shows_only_its_fingerprint() -> None:
    # Unit's error text goes into the caller's detail; a token in it goes no further.
    _, _, _, tokens = gateway_addons()
    error = TokenError(503, "token_endpoint_failed", f"creating a token: Unit said {TOKEN}")
    response = tokens._token_error_response(error)
    detail = response.json()["errors"][0]["detail"]
    assert TOKEN not in detail
    assert detail.startswith("creating a token: ") and "[token …" in detail


async def test_the_token_addon_frees_its_state_of_a_flow_when_it_ends_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its state holds tokens and verification tokens: gone when the flow is answered or
    # fails, whatever other addons run (none here); a challenge whose request got no
    # answer is put back for another try.
    async with placeholder_token_request(tmp_path, monkeypatch, None) as request:
        tokens, flow = request.tokens, request.flow
        assert tokens.service is not None
        reopened: list[str] = []
        monkeypatch.setattr(tokens.service, "reopen_challenge", reopened.append)
        flow.response = http.Response.make(400, b'{"errors": []}')
        tokens.response(flow)
        assert flow not in tokens._flows and reopened == []

        failed = tflow.tflow()
        state = FlowState(
            request.upstream,
            open_record(failed, request.upstream.environment),
            token_identity=CUSTOMER,
            challenge_id="unitgw-challenge-abc",
            verification_token="vt-REAL-123",
        )
        tokens._flows[failed] = state
        failed.error = flow_module.Error("Client disconnected.")
        tokens.error(failed)
        assert failed not in tokens._flows
        assert reopened == ["unitgw-challenge-abc"]
