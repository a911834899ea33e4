"""Credentials around the proxy, part by part (end to end in test_proxy_credentials_e2e.py):
log records redacted whole, secret options masked in what mitmproxy's UIs show, the gateway's
late look at headers placed after mitmproxy's own addons, CONNECT flows redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from mitmproxy import options, optmanager
from mitmproxy.addons import dumper, eventstore, intercept, view
from mitmproxy.addons.update_alt_svc import UpdateAltSvc
from mitmproxy.hooks import DoneHook
from mitmproxy.log import MitmFormatter
from mitmproxy.test import taddons, tflow
from mitmproxy.tools.dump import DumpMaster
from mitmproxy.tools.web.master import WebMaster

from conftest import ADDONS_ORG_TOKEN
from unit_gateway import cli
from unit_gateway.config.core import GatewayCore
from unit_gateway.mitm import addon_order, option_masks
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.redaction.late_headers import LateHeaders

TOKEN = ADDONS_ORG_TOKEN


@pytest.fixture
def redaction() -> Iterator[FlowRedaction]:
    """The redaction addon loaded (its log record factory installed), done at the end."""
    addon = FlowRedaction(GatewayCore())
    with taddons.context(addon):
        yield addon
        addon.done()  # (taddons does not call it)


def rendered(record: logging.LogRecord) -> list[str]:
    """What a handler prints of ``record``: with logging's formatter (traceback and stack
    included) and with mitmproxy's (console, event log)."""
    plain = logging.Formatter("%(levelname)s %(message)s")
    return [plain.format(record), MitmFormatter(colorize=False).format(record)]


def quota(token: str) -> None:
    raise KeyError(token)


def test_a_record_with_a_traceback_is_redacted_whole(redaction: FlowRedaction) -> None:
    logger = logging.getLogger("team")
    records: list[logging.LogRecord] = []
    logger.handle = records.append  # type: ignore[method-assign]
    try:
        try:
            quota(TOKEN)
        except KeyError as e:
            raise RuntimeError(f"lookup failed for {TOKEN}") from e
    except RuntimeError:
        logger.error("quota for %s", TOKEN, exc_info=True, stack_info=True)
    (record,) = records
    # The traceback went into the message (mitmproxy's formatter reads only exc_info, never
    # exc_text); nothing of the exception is left on the record.
    assert record.exc_info is None and record.args == ()
    for text in rendered(record):
        assert TOKEN not in text
        assert "quota for [token …" in text
        assert "Traceback (most recent call last)" in text and "in quota" in text
        assert "KeyError: '[token …" in text and "RuntimeError: lookup failed for [token …" in text
    assert record.stack_info is not None and "Stack (most recent call last)" in record.stack_info
    assert "test_a_record_with_a_traceback_is_redacted_whole" in record.stack_info


def test_a_stack_and_a_formatted_traceback_are_redacted(redaction: FlowRedaction) -> None:
    # What a handler upstream of mitmproxy's may hand over: text already formatted.
    record = logging.getLogRecordFactory()(
        "team", logging.WARNING, __file__, 1, "checked", (), None, None, f"  use({TOKEN!r})"
    )
    assert record.stack_info == "  use('[token …" + record.stack_info.split("[token …")[1]
    assert TOKEN not in "".join(rendered(record))


def test_a_broken_format_string_does_not_print_its_arguments(
    redaction: FlowRedaction, capsys: pytest.CaptureFixture[str]
) -> None:
    # logging's report of a format error prints the arguments as they are (to stderr).
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("team.broken")
    logger.addHandler(handler)
    try:
        logger.error("%d tokens", TOKEN)
    finally:
        logger.removeHandler(handler)
    printed = capsys.readouterr().err
    assert TOKEN not in printed
    assert "%d tokens (unformatted arguments: ('[token …" in printed


@pytest.fixture
def masks() -> Iterator[None]:
    assert option_masks.install(FlowRedaction(GatewayCore()).redact_text)
    yield
    option_masks.uninstall()


def options_with(**values: Any) -> options.Options:
    opts = options.Options()
    opts.add_option("unit_gateway_api_token", str, "", "a gateway option named as a secret")
    opts.add_option("team_rules", Sequence[str], [], "an option named as nothing secret")
    opts.update(**values)
    return opts


def test_options_named_as_secrets_are_masked_whole(masks: None) -> None:
    opts = options_with(unit_gateway_api_token="s3cr3t-value", listen_host="0.0.0.0", key_size=4096)
    dumped = optmanager.dump_dicts(opts)
    assert dumped["unit_gateway_api_token"]["value"] == option_masks.MASK
    assert dumped["unit_gateway_api_token"]["default"] == ""  # nothing to hide
    # Text options named as nothing secret, and numbers and switches, are shown.
    assert dumped["listen_host"]["value"] == "0.0.0.0"
    assert dumped["key_size"]["value"] == 4096
    # Once the gateway is done, mitmproxy shows options as it does.
    option_masks.uninstall()
    assert optmanager.dump_dicts(opts)["unit_gateway_api_token"]["value"] == "s3cr3t-value"


def test_what_the_redaction_finds_in_any_option_is_masked(masks: None) -> None:
    opts = options_with(team_rules=["plain", f"/~q/X-Token/{TOKEN}"])
    (shown,) = optmanager.dump_dicts(opts, ["team_rules"]).values()
    plain, rule = shown["value"]
    assert plain == "plain"
    assert rule.startswith("/~q/X-Token/[token …") and TOKEN not in rule
    # The option itself keeps the real value: mitmproxy uses it.
    assert opts.team_rules[1].endswith(TOKEN)


@pytest.mark.parametrize(
    ("master", "outputs"),
    [
        (DumpMaster, (dumper.Dumper,)),
        (WebMaster, (intercept.Intercept, view.View, eventstore.EventStore)),
    ],
)
async def test_the_late_look_runs_after_mitmproxys_addons_and_before_the_outputs(
    master: Any, outputs: tuple[type, ...]
) -> None:
    tool = master(options.Options(), with_termlog=False)
    late = LateHeaders(FlowRedaction(GatewayCore()))
    try:
        assert addon_order.add_after_defaults(tool.addons, late)
        kinds = [type(addon) for addon in tool.addons.chain]
        place = kinds.index(LateHeaders)
        assert kinds[place - 1] is UpdateAltSvc, "the last of mitmproxy's default addons"
        assert all(kinds.index(output) > place for output in outputs)
        assert tool.addons.get("unit_gateway_late_headers") is late
        addon_order.remove(tool.addons, late)
        assert LateHeaders not in [type(addon) for addon in tool.addons.chain]
    finally:
        await tool.addons.trigger_event(DoneHook())  # EventStore's log handler goes


def test_headers_set_after_the_redaction_are_shown_redacted_and_sent_real(
    redaction: FlowRedaction,
) -> None:
    flow = tflow.tflow()
    redaction.protect_request(flow, None)
    # What upstream_auth and modify_headers do after the gateway's own hooks.
    flow.request.headers["Proxy-Authorization"] = "Basic dXA6cGFzc3dvcmQ="
    flow.request.headers["X-Team-Token"] = TOKEN
    LateHeaders(redaction).requestheaders(flow)
    shown = flow.request.headers
    assert shown["Proxy-Authorization"].startswith("Basic [token …")
    assert shown["X-Team-Token"].startswith("[token …")
    sent = redaction.real_request(flow).headers
    assert sent["Proxy-Authorization"] == "Basic dXA6cGFzc3dvcmQ="
    assert sent["X-Team-Token"] == TOKEN

    flow.response = tflow.tresp()
    flow.response.headers["Set-Cookie"] = f"team={TOKEN}"
    LateHeaders(redaction).responseheaders(flow)
    assert TOKEN not in flow.response.headers["Set-Cookie"]


def test_a_connect_request_is_redacted_like_any_request(redaction: FlowRedaction) -> None:
    flow = tflow.tflow()
    flow.request = tflow.treq(method=b"CONNECT", host="api.s.unit.sh", port=443, path=b"")
    flow.request.headers["Proxy-Authorization"] = "Basic c3ZjOndyb25n"
    flow.request.headers["X-Team-Token"] = TOKEN
    redaction.http_connect(flow)
    assert flow.request.headers["Proxy-Authorization"].startswith("Basic [token …")
    assert flow.request.headers["X-Team-Token"].startswith("[token …")
    # The tunnel still goes where the client asked.
    assert (flow.request.host, flow.request.port) == ("api.s.unit.sh", 443)


@pytest.mark.parametrize(
    ("mode", "refused"),
    [
        ("upstream:http://svc:pw@proxy.internal:3128", True),
        ("upstream:http://svc:pw@proxy.internal:3128@8080", True),
        ("upstream:http://proxy.internal:3128", False),
        # An @ that starts the listen address is no credential.
        ("reverse:https://api.s.unit.sh@8081", False),
        ("reverse:http://127.0.0.1:5000@127.0.0.1:8081", False),
        ("regular@8080", False),
    ],
)
def test_credentials_in_a_mode_url_are_told_from_a_listen_address(mode: str, refused: bool) -> None:
    assert cli.quotes_credentials(mode) is refused
