"""Deadlines of forwarded requests, without a proxy: which flows are overdue, which get a
deadline and how long, and what happens to one mitmproxy cannot route an event to.
test_deadlines_e2e.py shows the 504 through a real gateway."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mitmproxy.connection import ConnectionState
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow

from conftest import gateway_addons, unit_config
from unit_gateway.config.schema import load
from unit_gateway.net.deadlines import is_overdue, routable
from unit_gateway.redaction.secrets import _SECRETS


def test_overdue_once_the_request_went_out_and_until_its_response_is_in() -> None:
    flow = tflow.tflow(resp=False)
    assert not is_overdue(flow, None, 60, now=1000), "not sent yet (a mint, an intercept)"
    assert not is_overdue(flow, 950, 60, now=1000)
    assert is_overdue(flow, 930, 60, now=1000)
    assert not is_overdue(flow, 930, None, now=1000), "no deadline: not a flow to Unit"
    flow.error = Error("killed")
    assert not is_overdue(flow, 930, 60, now=1000), "already ended"
    flow.error = None
    flow.response = tflow.tresp(timestamp_end=None)
    assert is_overdue(flow, 930, 60, now=1000), "headers in, body still coming"
    flow.response.timestamp_end = 999.0
    assert not is_overdue(flow, 930, 60, now=1000), "in: the addons have it (a retry)"


def test_only_http1_and_http2_flows_straight_to_the_server_can_be_reached() -> None:
    flow = tflow.tflow()
    assert not routable(flow), "its connection to the server is closed"
    flow.server_conn.state = ConnectionState.OPEN
    assert routable(flow)
    flow.server_conn.alpn = b"h2"
    assert routable(flow)
    flow.server_conn.alpn = b"h3"
    assert not routable(flow)
    flow.server_conn.alpn = b"http/1.1"
    flow.server_conn.state = ConnectionState.CLOSED  # mitmproxy sets via before it opens
    flow.server_conn.via = ("http", ("proxy.internal", 3128))
    flow.server_conn.state = ConnectionState.OPEN
    assert not routable(flow)


def test_flows_to_unit_get_the_configured_deadline_and_others_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(
        unit_config(tmp_path / "gw.yaml", monkeypatch, unit={"response_timeout_seconds": 7})
    )
    _, core, redaction, _ = gateway_addons()
    core.config = config
    redaction.reconfigure(config)
    to_unit = tflow.tflow(resp=False)
    to_unit.request.scheme, to_unit.request.host, to_unit.request.port = (
        "https",
        "api.s.unit.sh",
        443,
    )
    elsewhere = tflow.tflow(resp=False)
    assert redaction.secrets(to_unit).response_timeout == 7
    assert redaction.secrets(elsewhere).response_timeout is None
    redaction.set_response_timeout(to_unit, 5)  # what the token addon does for token endpoints
    assert redaction.secrets(to_unit).response_timeout == 5


def test_an_overdue_http3_flow_is_logged_once_and_left_to_mitmproxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, core, redaction, _ = gateway_addons()
    with taddons.context(core, redaction):
        flow = tflow.tflow(resp=False)
        flow.server_conn.alpn = b"h3"
        flow.server_conn.state = ConnectionState.OPEN
        secrets = redaction.secrets(flow)
        secrets.response_timeout, secrets.sent_at = 60, 100.0
        try:
            with caplog.at_level(logging.WARNING):
                redaction.time_out_overdue(now=200.0)
                redaction.time_out_overdue(now=201.0)
        finally:
            _SECRETS.pop(flow, None)
    warnings = [r.getMessage() for r in caplog.records if "cannot time out" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "no complete answer within 60 s" in warnings[0]
    assert secrets.timed_out
