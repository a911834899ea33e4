"""Credentials around the proxy, end to end: none of them appears in anything mitmproxy keeps
or shows, while every one of them still works.

- mitmweb's options (``GET /options``, the ``options/update`` message of ``/updates``) show
  secret options masked: ``proxyauth``, ``upstream_auth``, ``web_password``,
  ``cert_passphrase``, and any value a detector flags (a Unit token in ``modify_headers``);
- a CONNECT request is redacted like any other (a refused one is printed at ``flow_detail>=1``);
- headers mitmproxy's own addons add after the gateway's redaction (``upstream_auth``'s
  ``Proxy-Authorization`` in upstream mode, ``modify_headers``) are redacted before any output
  sees them, and still reach the wire;
- a log record's traceback (an operator's script that raises) is redacted with its message;
- credentials in a mode URL (which mitmproxy refuses, quoting them) are refused unprinted.
"""

from __future__ import annotations

import base64
import secrets
import socket
from pathlib import Path

import pytest
import requests

from conftest import (
    GatewayFactory,
    Planted,
    address_of,
    saved_flows,
    unit_stats,
)
from mitmweb_client import updates_of, web_session
from unit_gateway.testing import harness

PLACEHOLDER = {"Authorization": "Bearer unitgw:customer:10001"}
MASK = "[redacted]"


def secret(planted: Planted, label: str, prefix: str) -> str:
    return planted.add(label, f"{prefix}-{secrets.token_hex(12)}")


def session_through(gateway: harness.Gateway, credentials: str | None = None) -> requests.Session:
    proxy = gateway.proxy_url
    if credentials is not None:
        proxy = proxy.replace("http://", f"http://{credentials}@")
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": proxy, "https": proxy}
    session.verify = str(gateway.ca_path)
    return session


def web_gateway(
    gateway_factory: GatewayFactory, upstream: harness.Sandbox, name: str, *args: str
) -> tuple[harness.Gateway, str]:
    """A gateway running mitmweb, and its API's base URL."""
    web_port = harness.free_port()
    gateway = gateway_factory(
        upstream,
        name=name,
        web=True,
        extra_args=("--set", f"web_port={web_port}", "--set", "web_open_browser=false", *args),
    )
    gateway.process.wait_for(r"Web server listening at ")
    return gateway, f"http://127.0.0.1:{web_port}"


def test_mitmweb_shows_secret_options_masked(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, planted: Planted
) -> None:
    proxy_password = secret(planted, "proxyauth password", "pa")
    upstream_password = secret(planted, "upstream_auth password", "ua")
    web_password = secret(planted, "web_password", "wp")
    passphrase = secret(planted, "cert_passphrase", "cp")
    later_password = secret(planted, "proxyauth set through mitmweb", "pb")
    # A value no option name marks as secret, but a detector does (a Unit token), which
    # modify_headers also adds to every request after the gateway's redaction.
    team_token = planted.add("a Unit token in modify_headers", harness.make_org_token())
    gateway, base = web_gateway(
        gateway_factory,
        sandbox,
        "web-options",
        "--set", f"web_password={web_password}",
        "--set", f"proxyauth=svc:{proxy_password}",
        "--set", f"upstream_auth=up:{upstream_password}",
        "--set", f"cert_passphrase={passphrase}",
        "--set", f"modify_headers=/~q/X-Team-Token/{team_token}",
    )  # fmt: skip
    with web_session(web_password) as web, updates_of(base, web_password) as updates:
        with session_through(gateway, f"svc:{proxy_password}") as client:
            assert client.get(sandbox.url + "/cards", headers=PLACEHOLDER).status_code == 200
        changed = web.put(f"{base}/options", json={"proxyauth": f"svc:{later_password}"})
        assert changed.status_code == 200, changed.text
        with session_through(gateway, f"svc:{later_password}") as client:
            # The option really changed: the new password is the one that works.
            assert client.get(sandbox.url + "/cards", headers=PLACEHOLDER).status_code == 200
        answers = {path: web.get(base + path, timeout=10) for path in WEB_PATHS}
    for path, answer in answers.items():
        assert answer.status_code == 200, (path, answer.text)
        planted.blobs.append((f"mitmweb GET {path}", answer.content))
    planted.blobs.append(("mitmweb /updates websocket", b"\n".join(updates)))

    options = answers["/options"].json()
    for name in ("proxyauth", "upstream_auth", "web_password", "cert_passphrase"):
        assert options[name]["value"] == MASK, (name, options[name])
    (rule,) = options["modify_headers"]["value"]
    assert rule.startswith("/~q/X-Team-Token/") and team_token not in rule
    # Options that are not secret are shown as they are.
    assert options["web_port"]["value"] == int(base.rsplit(":", 1)[1])
    assert options["scripts"]["value"] and options["confdir"]["value"] == str(gateway.confdir)
    assert any(b'"options/update"' in u and b'"proxyauth"' in u for u in updates), updates
    assert b"/cards" in answers["/flows/dump"].content
    # Both requests reached Unit; the flows hold modify_headers' header (redacted: leak scan).
    assert unit_stats(sandbox, customer_tokens=1)["requests"]["GET /cards"] == 2
    assert b"X-Team-Token" in answers["/flows/dump"].content


#: What mitmweb serves that can hold an option, a flow or a log line.
WEB_PATHS = ("/options", "/state", "/events", "/flows", "/flows/dump", "/commands")


def connect(gateway: harness.Gateway, target: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """A raw CONNECT to ``target`` through the gateway: (status line, whole answer head and
    body as read until the gateway stops sending or closes)."""
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(address_of(gateway.proxy_url), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        sock.settimeout(2)
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and received.startswith(b"HTTP/1.1 200"):
                    break  # the tunnel is open: nothing more comes until we send
        except TimeoutError:
            pass
    return received.split(b"\r\n", 1)[0], received


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_connect_requests_are_redacted_refused_or_not(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    password = secret(planted, "proxy password", "pw")
    # Credentials a client sends that are not this proxy's (a typo, another proxy's): still
    # a secret of someone's.
    wrong = secret(planted, "a wrong proxy password", "wrong")
    token = planted.add("a Unit token on a CONNECT", harness.make_org_token())
    flows, har = run_dir / "connect.flows", run_dir / "connect.har"
    gateway = gateway_factory(
        tls_sandbox,
        name="connect",
        extra_args=(
            "--set", f"proxyauth=svc:{password}",
            "--set", "flow_detail=4",
            "--set", f"save_stream_file={flows}",
            "--set", f"hardump={har}",
        ),
    )  # fmt: skip
    target = tls_sandbox.url.removeprefix("https://")
    extra = {"X-Team-Token": token, "User-Agent": f"team-client {token}"}
    refused, answer = connect(
        gateway, target, {"Proxy-Authorization": basic(f"svc:{wrong}"), **extra}
    )
    assert refused == b"HTTP/1.1 407 Proxy Authentication Required", answer
    assert b"proxy_authentication_required" in answer
    opened, answer = connect(
        gateway, target, {"Proxy-Authorization": basic(f"svc:{password}"), **extra}
    )
    assert opened.startswith(b"HTTP/1.1 200"), answer
    # The tunnel works with the right credentials.
    with session_through(gateway, f"svc:{password}") as client:
        assert client.get(tls_sandbox.url + "/cards", headers=PLACEHOLDER).status_code == 200
    assert gateway.process.stop() == 0
    shown = gateway.process.output()
    # The refused CONNECT is printed (flow_detail=4), its headers redacted.
    assert f"CONNECT {target}" in shown and "X-Team-Token: [token" in shown, shown[-3000:]
    assert "Proxy-Authorization: Basic [token" in shown, shown[-3000:]


def test_upstream_mode_keeps_upstream_credentials_out_of_every_output(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    run_dir: Path,
    tmp_path: Path,
    planted: Planted,
) -> None:
    """mitmproxy's upstream_auth adds the upstream proxy's Proxy-Authorization to each plain
    HTTP request after the gateway's redaction: the upstream proxy gets it, no output shows it."""
    password = secret(planted, "upstream proxy password", "up")
    team_token = planted.add("a Unit token modify_headers adds", harness.make_org_token())
    # Someone else's proxy: its own output is not the gateway's (and not scanned).
    upstream_proxy = harness.start_bare_mitmdump(
        tmp_path / "upstream-proxy",
        extra_args=("--set", f"proxyauth=up:{password}", "--set", "flow_detail=0"),
        name="upstream-proxy",
    )
    try:
        flows, har = run_dir / "upstream.flows", run_dir / "upstream.har"
        gateway = gateway_factory(
            sandbox,
            name="upstream-mode",
            mode=f"upstream:{upstream_proxy.proxy_url}",
            extra_args=(
                "--set", f"upstream_auth=up:{password}",
                "--set", f"modify_headers=/~q/X-Team-Token/{team_token}",
                "--set", "flow_detail=4",
                "--set", f"save_stream_file={flows}",
                "--set", f"hardump={har}",
            ),
        )  # fmt: skip
        with session_through(gateway) as client:
            for _ in range(2):
                answer = client.get(sandbox.url + "/cards", headers=PLACEHOLDER)
                # Through the upstream proxy, which accepted the credentials.
                assert answer.status_code == 200, answer.text
        assert gateway.process.stop() == 0
    finally:
        assert upstream_proxy.process.stop() == 0
    assert unit_stats(sandbox, customer_tokens=1)["requests"]["GET /cards"] == 2
    saved = saved_flows(flows)
    assert len(saved) == 2
    for flow in saved:
        fields = {name.lower(): value for name, value in flow.request.headers.items()}
        assert fields["proxy-authorization"].startswith("Basic [token"), fields
        assert fields["x-team-token"].startswith("[token"), fields
    assert "Proxy-Authorization: Basic [token" in gateway.process.output()


#: An operator's own script that fails on a credential of its own (a Unit token it keeps in a
#: file): mitmproxy logs the failure with its traceback, whose last lines quote the token.
FAILING_SCRIPT = """
import logging
from pathlib import Path

TOKEN = Path(__file__).with_name("team-token").read_text().strip()
QUOTAS = {}
logger = logging.getLogger("team")


def quota(token):
    return QUOTAS[token]


def request(flow):
    try:
        quota(TOKEN)
    except KeyError:
        logger.warning("no quota for this team", exc_info=True)
        raise RuntimeError(f"team quota lookup failed for {TOKEN}")
"""


def test_a_traceback_in_the_log_is_redacted(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, tmp_path: Path, planted: Planted
) -> None:
    token = planted.add("the team script's Unit token", harness.make_org_token())
    team = tmp_path / "team"  # the operator's files: not an output of the gateway's
    team.mkdir()
    (team / "team-token").write_text(token)
    script = team / "team_script.py"
    script.write_text(FAILING_SCRIPT)
    gateway, base = web_gateway(gateway_factory, sandbox, "traceback", "-s", str(script))
    bearer = gateway.process.wait_for(r"Web server listening at \S+token=(\w+)").group(1)
    with session_through(gateway) as client:
        # The script's failure is logged; the request still goes through.
        assert client.get(sandbox.url + "/cards", headers=PLACEHOLDER).status_code == 200
    with web_session(bearer) as web:
        events = web.get(f"{base}/events", timeout=10)
    assert events.status_code == 200
    planted.blobs.append(("mitmweb GET /events", events.content))
    logged = "\n".join(event["message"] for event in events.json())
    # The tracebacks are there (console and event log), with the token redacted in them.
    for shown in (logged, gateway.process.output()):
        assert "Traceback (most recent call last)" in shown, shown[-3000:]
        assert (
            "KeyError: '[token" in shown
            and "RuntimeError: team quota lookup failed for [token" in shown
        )
        assert "no quota for this team" in shown


@pytest.mark.parametrize("given_to", ["unit-gateway", "mitmproxy"])
def test_credentials_in_a_mode_url_are_refused_without_being_printed(
    given_to: str, sandbox: harness.Sandbox, run_dir: Path, planted: Planted
) -> None:
    """mitmproxy takes no credentials in a mode URL and refuses it quoting them: the gateway
    refuses it first, saying where they go."""
    password = secret(planted, "a password in a mode URL", "mu")
    mode = ["--mode", f"upstream:http://svc:{password}@127.0.0.1:3128"]
    config = harness.write_gateway_config(run_dir / "gateway.yaml", upstream_url=sandbox.url)
    confdir = ["--set", f"confdir={run_dir / 'confdir'}", "--listen-port", "0"]
    args = [*mode, "--", *confdir] if given_to == "unit-gateway" else ["--", *mode, *confdir]
    process = harness.ManagedProcess(
        "mode-credentials",
        harness.python_command("run", "--config", str(config), *args),
        run_dir,
        env={"UNIT_ORG_TOKEN": sandbox.org_token},
    ).start()
    assert process.proc is not None
    process.proc.wait(60)
    assert process.stop() == 2, process.output()
    assert "cannot carry credentials" in process.output()
    assert "--set upstream_auth=USER:PASSWORD" in process.output()
