"""Fixtures for end-to-end tests: a real sandbox process, a real gateway process in front of
it, a client that goes through the gateway, and a leak scan over every output of the run."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mitmproxy import flow as mflow
from mitmproxy import http, io
from unit import Unit

from unit_gateway.config.core import GatewayCore
from unit_gateway.metrics.registry import GatewayMetrics
from unit_gateway.mitm import gate
from unit_gateway.net import jsonapi
from unit_gateway.redaction.addon import FlowRedaction
from unit_gateway.testing import harness
from unit_gateway.testing.leakscan import assert_no_leaks
from unit_gateway.tokens.addon import TokenInjector


@dataclass
class Planted:
    """Secret values planted in a run; at the end no output may contain any of them."""

    secrets: dict[str, str] = field(default_factory=dict)
    #: Extra outputs that are not files in the run directory (e.g. HTTP responses of mitmweb).
    blobs: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, label: str, value: str) -> str:
        self.secrets[label] = value
        return value

    def add_seed_pans(self) -> None:
        """The seeded cards' numbers: the same in every sandbox."""
        for card, pan in harness.seed_pans().items():
            self.add(f"PAN of card {card}", pan)

    def add_sandbox_inside(self, label: str) -> None:
        """What a sandbox inside another process holds, whose org token the test cannot ask
        for (made up in there): any Unit token at all, and the seeded card numbers."""
        self.add(f"any Unit token ({label})", "v2.public.")
        self.add_seed_pans()

    def add_issued(self, url: str, name: str = "sandbox", cert_path: Path | None = None) -> dict:
        """Every token and verification token a (running) sandbox issued; returns the list."""
        issued: dict = harness.sandbox_admin(url, "GET", "/__sandbox/issued", cert_path=cert_path)
        for i, token in enumerate(issued["tokens"]):
            self.add(f"{name}: token {i + 1}", token)
        for i, token in enumerate(issued["verificationTokens"]):
            self.add(f"{name}: verification token {i + 1}", token)
        return issued


#: The org token of gateway addons driven without a proxy (in Unit's token shape).
ADDONS_ORG_TOKEN = "v2.public.eyJyb2xlIjoiY3VzdG9tZXIifQ.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def mitmproxy_checked() -> None:
    """Addons driven in this process (no gate addon ahead of them) may replace mitmproxy's
    internals when the gate would let a gateway start on this mitmproxy."""
    assert gate.approve_if_supported(), gate.problems()


@pytest.fixture(autouse=True)
def log_record_factory_restored() -> Iterator[None]:
    """The redaction addon's log record factory goes with the test that loaded it, also when
    the test never ends the addon (taddons does not call ``done``): later tests' records would
    be redacted, their tracebacks folded into their messages."""
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)


def unit_config(path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Path:
    """A gateway configuration for Unit's sandbox host, its org token in the environment."""
    monkeypatch.setenv("UNIT_ORG_TOKEN", ADDONS_ORG_TOKEN)
    return harness.write_gateway_config(
        path, upstream_url="https://api.s.unit.sh", overrides=overrides
    )


def gateway_addons() -> tuple[GatewayMetrics, GatewayCore, FlowRedaction, TokenInjector]:
    """The gateway's metrics, core, redaction and token addons, wired as addons/gateway.py
    wires them."""
    metrics = GatewayMetrics()
    core = GatewayCore(metrics)
    redaction = FlowRedaction(core, metrics)
    return metrics, core, redaction, TokenInjector(core, metrics, redaction)


def sdk(
    gateway: harness.Gateway, sandbox: harness.Sandbox, token: str, mp: pytest.MonkeyPatch
) -> Unit:
    """Unit's SDK as a service uses it: proxy and CA from the environment (and no other proxy
    setting of the machine's), a placeholder token."""
    clear_proxy_settings(mp)
    mp.setenv("HTTP_PROXY", gateway.proxy_url)
    mp.setenv("HTTPS_PROXY", gateway.proxy_url)
    mp.setenv("REQUESTS_CA_BUNDLE", str(gateway.ca_path))
    return Unit(sandbox.url, token)


def application(ssn: str | None, passport: str | None, birth: str) -> dict[str, Any]:
    """Unit's create-application body for an individual with an SSN or a passport."""
    attributes: dict[str, Any] = {
        "fullName": {"first": "Peter", "last": "Parker"},
        "dateOfBirth": birth,
        "address": {
            "street": "20 Ingram St",
            "city": "Forest Hills",
            "state": "NY",
            "postalCode": "11375",
            "country": "US",
        },
        "phone": {"countryCode": "1", "number": "5555555555"},
        "email": "peter@example.com",
    }
    if ssn is not None:
        attributes["ssn"] = ssn
    if passport is not None:
        attributes |= {"passport": passport, "nationality": "CA"}
    return {"data": {"type": "individualApplication", "attributes": attributes}}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir()
    return path


@pytest.fixture
def planted(run_dir: Path) -> Iterator[Planted]:
    """Secrets a test plants. Every fixture that starts a process depends on this one, so its
    teardown runs after they stopped: then every output of the run is scanned."""
    found = Planted()
    yield found
    if found.secrets:
        assert_no_leaks(found.secrets, paths=[run_dir], blobs=found.blobs)


@contextmanager
def planted_sandbox(
    run_dir: Path, planted: Planted, label: str = "org token", **start: Any
) -> Iterator[harness.Sandbox]:
    """A sandbox (``harness.start_sandbox`` with ``start``) whose org token, seeded card
    numbers and everything it issues are planted; stopped at the end (it must exit 0)."""
    box = harness.start_sandbox(run_dir, **start)
    planted.add(label, box.org_token)
    planted.add_seed_pans()
    try:
        yield box
        # A test may have stopped its sandbox on purpose (an outage).
        if box.process.proc is not None and box.process.proc.poll() is None:
            planted.add_issued(box.url, box.process.name, box.cert_path)
    finally:
        assert box.process.stop() == 0, box.process.output()[-2000:]


def take_down(box: harness.Sandbox, planted: Planted) -> None:
    """Unit goes away (an outage): what it issued so far is planted first, since the sandbox
    fixture can no longer ask it at teardown."""
    planted.add_issued(box.url, box.process.name, box.cert_path)
    assert box.process.stop() == 0


def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.1
) -> bool:
    """Whether ``condition()`` turned true within ``timeout`` seconds (asked every
    ``interval``, and once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


#: How much later than a deadline the caller may hear of it: the sweep runs every 0.5 s.
DEADLINE_SLACK_SECONDS = 1.5


def saved_flows_of[F: mflow.Flow](path: Path, kind: type[F]) -> list[F]:
    """The flows of one kind (HTTP, UDP, DNS, ...) in a ``save_stream_file``."""
    with path.open("rb") as f:
        return [flow for flow in io.FlowReader(f).stream() if isinstance(flow, kind)]


def saved_flows(path: Path) -> list[http.HTTPFlow]:
    """The HTTP flows of a ``save_stream_file``."""
    return saved_flows_of(path, http.HTTPFlow)


def config_reloads(gateway: harness.Gateway, outcome: str) -> float:
    """``unit_gateway_config_reloads_total`` for ``outcome`` (0 before the first)."""
    match = re.search(
        r'^unit_gateway_config_reloads_total\{[^}]*outcome="' + outcome + r'"[^}]*\} (\S+)$',
        gateway.metrics_text(),
        re.MULTILINE,
    )
    return float(match.group(1)) if match else 0.0


@dataclass
class EmbeddedGateway:
    """A gateway process whose sandbox starts inside its running hook, after mitmproxy has
    begun listening: the widest start-up window there is."""

    process: harness.ManagedProcess
    proxy_port: int
    upstream: str
    confdir: Path

    def connect_when_open(self, timeout: float = 30) -> None:
        """Returns the moment the proxy port accepts a connection."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.proxy_port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, self.process.output()
                time.sleep(0.001)


def start_embedded_gateway(run_dir: Path, planted: Planted) -> EmbeddedGateway:
    sandbox_port, proxy_port = harness.free_port(), harness.free_port()
    upstream = f"http://127.0.0.1:{sandbox_port}"
    config = harness.write_gateway_config(
        run_dir / "gateway.yaml",
        upstream_url=upstream,
        overrides={"sandbox": {"embedded": True, "port": sandbox_port}},
    )
    org_token = planted.add("org token of the embedded sandbox", harness.make_org_token())
    planted.add_seed_pans()
    confdir = run_dir / "confdir"
    argv = harness.python_command(
        "run", "--config", str(config), "--listen-host", "127.0.0.1",
        "--listen-port", str(proxy_port), "--", "--set", f"confdir={confdir}",
    )  # fmt: skip
    process = harness.ManagedProcess("gateway", argv, run_dir, env={"UNIT_ORG_TOKEN": org_token})
    process.start()
    return EmbeddedGateway(process, proxy_port, upstream, confdir)


def wait_until_unit_answered_all(sandbox: harness.Sandbox, timeout: float = 10.0) -> None:
    """Wait until the sandbox has answered every request it got. A request the gateway gave
    up on (a deadline) is still finished by Unit, maybe with a token: once it is, the sandbox
    fixture's teardown plants that token for the leak scan."""

    def answered_all() -> bool:
        stats = sandbox.stats()
        return sum(stats["responses"].values()) >= stats["total_requests"]

    assert wait_until(answered_all, timeout), f"Unit never finished: {sandbox.stats()}"


@pytest.fixture
def sandbox(run_dir: Path, planted: Planted) -> Iterator[harness.Sandbox]:
    with planted_sandbox(run_dir, planted, extra_args=["--rate-limit", "100000"]) as box:
        yield box


def planted_tls_sandbox(
    run_dir: Path, planted: Planted, *extra_args: str
) -> AbstractContextManager[harness.Sandbox]:
    """``planted_sandbox`` over TLS (``extra_args`` after the harness's: a later ``--host``
    wins)."""
    return planted_sandbox(
        run_dir,
        planted,
        "org token (tls sandbox)",
        tls=True,
        name="tls-sandbox",
        extra_args=["--rate-limit", "100000", *extra_args],
    )


@pytest.fixture
def tls_sandbox(run_dir: Path, planted: Planted) -> Iterator[harness.Sandbox]:
    with planted_tls_sandbox(run_dir, planted) as box:
        yield box


@pytest.fixture
def jwt_key(run_dir: Path) -> rsa.RSAPrivateKey:
    """A key pair for the ``jwt`` two-factor strategy: the private key (for the gateway) and
    the public one (for the sandbox) as PEM files in the run directory."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (run_dir / "jwt-private.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (run_dir / "jwt-public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def jwt_settings(run_dir: Path) -> dict[str, Any]:
    """The gateway's ``tokens.jwt`` section for the ``jwt_key`` fixture's key and the
    sandbox's seeded jwtSubject (``user|<customerId>``)."""
    return {
        "private_key": {"file": str(run_dir / "jwt-private.pem")},
        "subject_template": "user|{customerId}",
    }


@pytest.fixture
def jwt_sandbox(
    run_dir: Path, planted: Planted, jwt_key: rsa.RSAPrivateKey
) -> Iterator[harness.Sandbox]:
    """A sandbox that accepts JWTs signed with ``jwt_key`` for two-factor scopes."""
    with planted_sandbox(
        run_dir,
        planted,
        name="jwt-sandbox",
        extra_args=["--jwt-public-key", str(run_dir / "jwt-public.pem"), "--rate-limit", "100000"],
    ) as box:
        yield box


#: Proxy settings a client could pick up from the environment, in either case.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def clear_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy setting of the machine's may route an in-process client (lower case wins
    over upper case in Python's lookup, so both go)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def env_without_proxies(**extra: str) -> dict[str, str]:
    """This process's environment without proxy settings, plus ``extra``: for a client
    process that must not be sent through a proxy it was not meant to use."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    return env | extra


GatewayFactory = Callable[..., harness.Gateway]

#: Exit statuses of a gateway that still had a UDP flow open when stopped (a UDP or DNS
#: listener: mitmproxy ends one only after 20 s idle). It may die of SIGSEGV as Python exits,
#: after every addon's ``done`` ran and every output was written: a mitmproxy_rs (tokio)
#: thread that asks for the GIL while the interpreter finalizes is ended with pthread_exit
#: (CPython 3.12), whose unwinding through Rust frames crashes (mitmproxy issue 7409). Bare
#: mitmdump does the same in about one stop in five.
UDP_FLOW_EXIT_STATUSES = (0, -signal.SIGSEGV)


class UnitUpstream(Protocol):
    """What a gateway needs of the Unit it stands in front of: a sandbox, or a test's own
    server that answers as no sandbox would."""

    url: str
    org_token: str
    cert_path: Path | None


@pytest.fixture
def gateway_factory(run_dir: Path, planted: Planted) -> Iterator[GatewayFactory]:
    """Start gateways in front of a sandbox; on teardown stop each (it must exit 0 and free
    its ports). The ``planted`` fixture then scans every output of the run."""
    started: list[tuple[harness.Gateway, Collection[int]]] = []

    def start(
        upstream: UnitUpstream,
        *,
        overrides: dict[str, Any] | None = None,
        mode: str | None = None,
        extra_args: tuple[str, ...] = (),
        name: str = "gateway",
        web: bool = False,
        exit_statuses: Collection[int] = (0,),
    ) -> harness.Gateway:
        config = harness.write_gateway_config(
            run_dir / f"{name}.yaml", upstream_url=upstream.url, overrides=overrides
        )
        gateway = harness.start_gateway(
            run_dir,
            config,
            org_token=upstream.org_token,
            mode=mode,
            extra_args=extra_args,
            upstream_ca=upstream.cert_path,
            name=name,
            web=web,
        )
        started.append((gateway, exit_statuses))
        return gateway

    yield start

    for gateway, exit_statuses in started:
        proc = gateway.process.proc
        if gateway.metrics_url and proc is not None and proc.poll() is None:
            # What /metrics served: one last scrape holds every label set it ever had.
            served = gateway.metrics_text().encode()
            planted.blobs.append((f"{gateway.process.name} /metrics", served))
        status = gateway.process.stop()
        assert status in exit_statuses, gateway.process.output()[-2000:]
        for port in ports_of(gateway):
            assert harness.port_is_free(port), f"port {port} still bound after stop"


def error_of(response: requests.Response | httpx.Response, status: int) -> dict[str, Any]:
    """The single JSON:API error of a response that must have ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(jsonapi.MEDIA_TYPE)
    errors = jsonapi.errors_of(response.content)
    assert errors is not None and len(errors) == 1, response.text
    assert errors[0]["status"] == str(status)
    return errors[0]


def unit_stats(sandbox: harness.Sandbox, *, customer_tokens: int) -> dict[str, Any]:
    """The sandbox's counts, once they show ``customer_tokens`` customer tokens created and
    every request to Unit carrying a valid token."""
    stats = sandbox.stats()
    assert stats["tokens_created"]["customer"] == customer_tokens
    assert stats["unauthenticated"] == {}
    return stats


def address_of(url: str) -> tuple[str, int]:
    """(host, port) to connect to for ``url`` (an IPv6 host without its brackets)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    return parts.hostname, parts.port


def port_of(url: str) -> int:
    return address_of(url)[1]


def ports_of(gateway: harness.Gateway) -> list[int]:
    urls = [gateway.proxy_url] + ([gateway.metrics_url] if gateway.metrics_url else [])
    return [port_of(url) for url in urls]


@pytest.fixture
def gateway(gateway_factory: GatewayFactory, sandbox: harness.Sandbox) -> harness.Gateway:
    return gateway_factory(sandbox)


def proxied_session(gateway: harness.Gateway) -> requests.Session:
    """A requests session that reaches every URL through the gateway and trusts its CA."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": gateway.proxy_url, "https": gateway.proxy_url}
    session.verify = str(gateway.ca_path)
    return session


@pytest.fixture
def client(gateway: harness.Gateway) -> Iterator[requests.Session]:
    with proxied_session(gateway) as session:
        yield session


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_processes() -> Iterator[None]:
    yield
    harness.stop_all()
