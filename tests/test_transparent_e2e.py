"""Transparent mode end to end: a client in its own network namespace calls the Unit host
directly, with no proxy settings; an iptables REDIRECT on the host sends its connections to the
gateway, which takes the original destination from the socket (SO_ORIGINAL_DST), injects the
real token and forwards to that destination.

Topology (created and removed by the ``client_net`` fixture)::

    namespace ugw-<hex>                       root namespace
    client  <ns_ip>/30 ─── veth pair ───  <host_ip>/30
                                            sandbox (TLS)  <host_ip>:<sandbox port>  "Unit"
                                            gateway        <host_ip>:<gateway port>
    PREROUTING -i <veth> -p tcp --dport <sandbox port> -j REDIRECT --to-ports <gateway port>

The gateway's own connections (forwarding, token minting) start in the root namespace and pass
OUTPUT, not PREROUTING, so they are not redirected back to it. The SDK test runs over IPv6 too
(``client_net`` parametrized with 6: a random fd00::/8 /64 on the veth pair, the same rule with
ip6tables).

The ``rogue`` fixture adds a TLS server that is not Unit on a second address of the root side
(``<rogue ip>/32`` on the veth, a route to it in the namespace), on the sandbox's port so the
same REDIRECT rule covers it: a client that dials it while naming Unit in its Host header
must not get a real token sent there.

Services on the gateway host itself (``local_unit_ip``: the Unit host at an address on ``lo``)
are sent to the gateway by docs/transparent-mode.md's OUTPUT rule, over IPv4 and IPv6, to
its listeners on 127.0.0.1 and ::1.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    GatewayFactory,
    Planted,
    env_without_proxies,
    planted_tls_sandbox,
    port_of,
    unit_stats,
)
from unit_gateway.net import jsonapi
from unit_gateway.sandbox.server import url_host
from unit_gateway.sandbox.tls import CertificateFiles, write_certificates
from unit_gateway.testing import harness

pytestmark = pytest.mark.timeout(60)

#: What the client runs inside the namespace: Unit's own SDK, a placeholder token, and nothing
#: that knows about a proxy. It trusts the gateway's CA through REQUESTS_CA_BUNDLE.
CLIENT = """
import json, sys
from unit import Unit

unit = Unit(sys.argv[1], "unitgw:customer:10001")
cards = unit.cards.list()
print(json.dumps([c.relationships["customer"].id for c in cards.data]))
"""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15)


def _must(*argv: str) -> None:
    result = _run(*argv)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr.strip()}"


@dataclass
class ClientNet:
    namespace: str
    host_if: str
    host_ip: str
    ns_ip: str
    #: ``iptables`` or ``ip6tables``: the addresses' family
    iptables: str = "iptables"
    rules: list[list[str]] = field(default_factory=list)

    def redirect(self, dport: int, to_port: int) -> None:
        """Send the namespace's TCP connections to ``dport`` to local ``to_port``."""
        rule = [
            "PREROUTING", "-i", self.host_if, "-p", "tcp", "--dport", str(dport),
            "-j", "REDIRECT", "--to-ports", str(to_port),
        ]  # fmt: skip
        _must(self.iptables, "-t", "nat", "-A", *rule)
        self.rules.append(rule)

    def run(
        self, argv: list[str], *, env: dict[str, str], out: Path, timeout: float = 20
    ) -> tuple[int, str]:
        """Run ``argv`` inside the namespace; stdout and stderr go to ``out`` (in the run
        directory, so the leak scan reads them) and are returned."""
        with out.open("wb") as sink:
            status = subprocess.run(
                ["ip", "netns", "exec", self.namespace, *argv],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=timeout,
            ).returncode
        return status, out.read_text(errors="replace")


def _client_net(version: int) -> Iterator[ClientNet]:
    """A network namespace joined to the root namespace by a veth pair, with addresses of IP
    ``version``; removed afterwards with its veth pair and every iptables rule added through
    it, even when the test fails."""
    iptables = "iptables" if version == 4 else "ip6tables"
    if sys.platform != "linux":
        pytest.skip("transparent mode with iptables REDIRECT is Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace, a veth pair and iptables rules")
    for tool in ("ip", iptables):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (.ci/run installs iptables)")
    tag = secrets.token_hex(3)
    namespace, host_if, ns_if = f"ugw-{tag}", f"ugw{tag}h", f"ugw{tag}c"
    if version == 4:
        # A random /30 in 198.18.0.0/15 (reserved for network tests), so parallel runs do
        # not meet.
        benchmarking = ipaddress.ip_network("198.18.0.0/15")
        base = benchmarking.network_address + secrets.randbelow(benchmarking.num_addresses // 4) * 4
        prefix = 30
    else:
        # A random /64 of a random unique local prefix (fd00::/8).
        base = ipaddress.IPv6Address((0xFD << 120) | (secrets.randbits(56) << 64))
        prefix = 64
    host_ip, ns_ip = str(base + 1), str(base + 2)
    # IPv6 addresses are usable at once without duplicate address detection (nodad).
    flags = ("nodad",) if version == 6 else ()
    added = _run("ip", "netns", "add", namespace)
    if added.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {added.stderr.strip()}")
    net = ClientNet(namespace, host_if, host_ip, ns_ip, iptables)
    try:
        _must("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _must("ip", "link", "set", ns_if, "netns", namespace)
        _must("ip", "addr", "add", f"{host_ip}/{prefix}", "dev", host_if, *flags)
        _must("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", namespace, "ip")
        _must(*inside, "addr", "add", f"{ns_ip}/{prefix}", "dev", ns_if, *flags)
        _must(*inside, "link", "set", ns_if, "up")
        _must(*inside, "link", "set", "lo", "up")
        yield net
    finally:
        for rule in reversed(net.rules):
            _run(iptables, "-t", "nat", "-D", *rule)
        _run("ip", "link", "del", host_if)  # gone with the namespace too; removed here first
        _run("ip", "netns", "del", namespace)


@pytest.fixture
def client_net(request: pytest.FixtureRequest) -> Iterator[ClientNet]:
    """IPv4, or the IP version a test gives it (``indirect`` parametrization)."""
    yield from _client_net(getattr(request, "param", 4))


def _unit_at(ip: str, run_dir: Path, planted: Planted) -> Iterator[harness.Sandbox]:
    """The TLS sandbox as the Unit host, listening on ``ip`` (its certificate names that
    address)."""
    with planted_tls_sandbox(run_dir, planted, "--host", ip) as box:
        yield box


@pytest.fixture
def unit_host(client_net: ClientNet, run_dir: Path, planted: Planted) -> Iterator[harness.Sandbox]:
    """The Unit host the client calls: on the root side of the veth pair, where the gateway
    can connect to it as the original destination."""
    yield from _unit_at(client_net.host_ip, run_dir, planted)


def _transparent_gateway(
    net: ClientNet,
    unit_host: harness.Sandbox,
    gateway_factory: GatewayFactory,
    overrides: dict[str, Any] | None = None,
) -> harness.Gateway:
    """The gateway in transparent mode, with the client's connections to Unit redirected to it."""
    # The upstream is the address the client dials: in transparent mode that original
    # destination is flow.request.host. The gateway listens where REDIRECT delivers: the
    # primary address of the interface the packet came in on (the later --listen-host wins).
    gateway = gateway_factory(
        unit_host,
        overrides=overrides,
        mode="transparent",
        extra_args=("--listen-host", net.host_ip),
        name="transparent",
    )
    gateway_port = port_of(gateway.proxy_url)
    assert gateway.proxy_url == f"http://{url_host(net.host_ip)}:{gateway_port}"
    assert unit_host.url.startswith(f"https://{url_host(net.host_ip)}:")
    net.redirect(port_of(unit_host.url), gateway_port)
    return gateway


def _run_client(
    net: ClientNet, gateway: harness.Gateway, unit_host: harness.Sandbox, script: str, out: Path
) -> Any:
    """Run ``script`` in the namespace against the Unit host; what it printed last, as JSON."""
    # The client trusts mitmproxy's CA, not the sandbox's: it talks TLS to the gateway.
    env = env_without_proxies(REQUESTS_CA_BUNDLE=str(gateway.ca_path), PYTHONUNBUFFERED="1")
    status, output = net.run([sys.executable, "-c", script, unit_host.url], env=env, out=out)
    assert status == 0, output + gateway.process.output()[-3000:]
    # The real customer token was used; no output of the run (the client's included) may show
    # it: the sandbox fixture plants what Unit issued for the leak scan at teardown.
    assert "v2.public." not in output
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.parametrize("client_net", [4, 6], ids=["ipv4", "ipv6"], indirect=True)
def test_transparent_mode_with_the_python_sdk_in_a_namespace(
    client_net: ClientNet,
    unit_host: harness.Sandbox,
    gateway_factory: GatewayFactory,
    run_dir: Path,
) -> None:
    # Over IPv6 as docs/transparent-mode.md says (ip6tables, the same rule): the original
    # destination comes from IPv6's own socket option, and the upstream is an IPv6 address in
    # brackets.
    gateway = _transparent_gateway(client_net, unit_host, gateway_factory)
    customers = _run_client(client_net, gateway, unit_host, CLIENT, run_dir / "client.output")
    assert customers and set(customers) == {"10001"}

    stats = unit_host.stats()
    assert stats["tokens_created"] == {"customer": 1, "cardholder": 0}, "one token, no other"
    assert stats["requests"]["GET /cards"] == 1
    # The gateway got the client's own connection (from inside the namespace) and knew where
    # it was going: the original destination, taken from the redirected socket.
    # (mitmdump shows an IPv6 client in brackets, and the URL's IPv6 host without them.)
    client = re.escape(url_host(client_net.ns_ip))
    unit = rf"https://\[?{re.escape(client_net.host_ip)}\]?:{port_of(unit_host.url)}"
    gateway.process.wait_for(rf"^{client}:\d+: GET {unit}/cards", timeout=5)


#: The client's call while Unit hangs: how long it waited and what the SDK made of the answer.
LATE_CLIENT = """
import json, sys, time
from unit import Unit
from unit.models import UnitError
unit = Unit(sys.argv[1], "unitgw:customer:10001")
started = time.monotonic()
late = unit.cards.list()
error = late.errors[0] if isinstance(late, UnitError) else None
print(json.dumps({"waited": time.monotonic() - started,
                  "error": error and [error.status, error.code, error.detail]}))
"""


def test_unit_answering_late_in_transparent_mode_is_a_504_at_the_deadline(
    client_net: ClientNet,
    unit_host: harness.Sandbox,
    gateway_factory: GatewayFactory,
    run_dir: Path,
) -> None:
    """The deadline of a forwarded request (unit.response_timeout_seconds) holds when the
    client dialed Unit itself and only iptables sent it to the gateway."""
    gateway = _transparent_gateway(
        client_net, unit_host, gateway_factory, {"unit": {"response_timeout_seconds": 1}}
    )
    customers = _run_client(client_net, gateway, unit_host, CLIENT, run_dir / "first.output")
    assert set(customers) == {"10001"}  # the token is minted and cached

    unit_host.faults(latency_ms=4000)  # Unit hangs longer than the deadline
    late = _run_client(client_net, gateway, unit_host, LATE_CLIENT, run_dir / "late.output")
    unit_host.faults(latency_ms=0)
    status, code, detail = late["error"]
    assert (status, code) == ("504", "upstream_timeout"), detail
    assert "(Unit): no complete answer within 1 s" in detail
    # the sweep runs every 0.5 s; the client also starts a process and a TLS handshake
    assert 1.0 <= late["waited"] < 3.0, late

    customers = _run_client(client_net, gateway, unit_host, CLIENT, run_dir / "again.output")
    assert set(customers) == {"10001"}
    stats = unit_stats(unit_host, customer_tokens=1)
    assert stats["requests"]["GET /cards"] == 3, "the late one reached Unit with its token"
    gateway.process.wait_for(r"no complete answer within 1 s; answered 504", timeout=5)


# --- a Host header naming Unit on a connection to another server ------------------------------

#: A client that dials one address and names the Unit host in its Host header, as a program
#: could that resolves Unit's name itself, or one that wants a real token sent elsewhere.
HOST_HEADER_CLIENT = """
import json, sys, requests

response = requests.get(
    sys.argv[1] + "/cards",
    headers={"Host": sys.argv[2], "Authorization": "Bearer unitgw:customer:10001"},
    timeout=15,
)
print(response.status_code)
print(json.dumps([c["relationships"]["customer"]["data"]["id"] for c in response.json()["data"]]))
"""


class _RogueHandler(http.server.BaseHTTPRequestHandler):
    server: RogueServer

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.server.record(self.requestline, dict(self.headers))
        return parsed

    def do_GET(self) -> None:
        body = jsonapi.error_bytes(401, code="not_unit", detail="this server is not Unit")
        self.send_response(401)
        self.send_header("Content-Type", jsonapi.MEDIA_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RogueServer(http.server.ThreadingHTTPServer):
    """A TLS server that is not Unit. It records every TLS handshake and every request it
    gets, in memory and in ``log`` (in the run directory, so the leak scan reads it too)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], certificates: CertificateFiles, log: Path) -> None:
        self.ip = address[0]
        self.certificates = certificates
        self.log = log
        self.handshakes: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._context = certificates.server_context()
        self._lock = threading.Lock()
        super().__init__(address, _RogueHandler)

    def record(self, requestline: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((requestline, headers))
            with self.log.open("a") as out:
                out.write(f"{requestline} {json.dumps(headers)}\n")

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs here, in the connection's own thread, so a failed one is recorded.
        request.settimeout(10)
        try:
            tls = self._context.wrap_socket(request, server_side=True)
        except OSError as e:
            with self._lock:
                self.handshakes.append(f"failed: {e}")
            return
        with self._lock:
            self.handshakes.append("ok")
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


@pytest.fixture
def rogue(
    client_net: ClientNet, unit_host: harness.Sandbox, run_dir: Path
) -> Iterator[RogueServer]:
    """A TLS server on a second address of the root side, on the Unit host's port (so the
    REDIRECT rule covers connections to it too), with a certificate from its own CA for that
    address; the namespace gets a route to it. Address and route are removed afterwards."""
    benchmarking = ipaddress.ip_network("198.18.0.0/15")
    client_side = ipaddress.ip_network(f"{client_net.host_ip}/30", strict=False)
    address = client_side.network_address
    while address in client_side:
        address = benchmarking.network_address + secrets.randbelow(benchmarking.num_addresses)
    ip = str(address)
    port = port_of(unit_host.url)
    inside = ("ip", "netns", "exec", client_net.namespace, "ip")
    _must("ip", "addr", "add", f"{ip}/32", "dev", client_net.host_if)
    try:
        _must(*inside, "route", "add", f"{ip}/32", "via", client_net.host_ip)
        certificates = write_certificates(run_dir / "rogue-tls", ip)
        server = RogueServer((ip, port), certificates, run_dir / "rogue.log")
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    finally:
        _run(*inside, "route", "del", f"{ip}/32")
        _run("ip", "addr", "del", f"{ip}/32", "dev", client_net.host_if)


def test_a_host_header_naming_unit_gets_no_token_sent_to_the_address_dialed(
    client_net: ClientNet,
    unit_host: harness.Sandbox,
    rogue: RogueServer,
    gateway_factory: GatewayFactory,
    run_dir: Path,
) -> None:
    # The client dials the rogue address; its Host header names the Unit host. Before the
    # fix the gateway matched the upstream on that header, injected a real customer token
    # and sent the request where the client dialed: to the rogue server.
    #
    # The worst case: the gateway trusts the rogue's certificate too (as it would trust a
    # publicly trusted one), so TLS to the rogue address succeeds and only the gateway's
    # choice of destination keeps the token from it.
    assert unit_host.cert_path is not None
    both_cas = run_dir / "unit-and-rogue-ca.pem"
    both_cas.write_bytes(unit_host.cert_path.read_bytes() + rogue.certificates.ca_cert.read_bytes())
    trusting_both = harness.Sandbox(unit_host.process, unit_host.url, unit_host.org_token, both_cas)
    gateway = gateway_factory(
        trusting_both,
        mode="transparent",
        extra_args=("--listen-host", client_net.host_ip),
        name="transparent",
    )
    gateway_port = port_of(gateway.proxy_url)
    port = port_of(unit_host.url)
    client_net.redirect(port, gateway_port)  # every address on that port, the rogue's too

    env = env_without_proxies(REQUESTS_CA_BUNDLE=str(gateway.ca_path), PYTHONUNBUFFERED="1")
    unit_authority = f"{client_net.host_ip}:{port}"
    status, output = client_net.run(
        [sys.executable, "-c", HOST_HEADER_CLIENT, f"https://{rogue.ip}:{port}", unit_authority],
        env=env,
        out=run_dir / "client.output",
    )
    assert status == 0, output + gateway.process.output()[-3000:]

    # The rogue server got no request at all, with or without a token. (Before the fix it
    # got the real token; Unit's 401 retry then sent the request to the real Unit host with a
    # fresh token, so the caller still saw its cards.) Request lines only: no header values
    # in a failure message.
    assert [line for line, _ in rogue.requests] == []
    # The gateway connects when a request needs it (connection_strategy=lazy), not when the
    # client connects: it never even completed TLS with the address the client dialed.
    assert rogue.handshakes == [], rogue.handshakes
    unit_authority_re = re.escape(unit_authority)
    gateway.process.wait_for(rf"server connect {unit_authority_re}$", timeout=5)
    ns_ip = re.escape(client_net.ns_ip)
    gateway.process.wait_for(rf"^{ns_ip}:\d+: GET https://{unit_authority_re}/cards$", timeout=5)

    # The request went to the Unit host the Host header named: one customer token minted,
    # one GET /cards, and the caller got customer 10001's cards.
    lines = output.strip().splitlines()
    assert lines[-2] == "200", output
    customers = json.loads(lines[-1])
    assert customers and set(customers) == {"10001"}
    stats = unit_host.stats()
    assert stats["requests"]["GET /cards"] == 1
    assert stats["tokens_created"] == {"customer": 1, "cardholder": 0}, "one token, no other"


# --- services on the gateway host itself: OUTPUT, excluding the gateway's own user -----------


@dataclass
class LocalUnit:
    """A Unit host at an address of this host (a /32 or /128 on ``lo``) and the OUTPUT rules
    sending other users' connections to it through the gateway."""

    ip: str
    iptables: str = "iptables"
    rules: list[list[str]] = field(default_factory=list)

    def redirect_other_users(self, dport: int, to_port: int, gateway_uid: int) -> None:
        """docs/transparent-mode.md's rule for services on the gateway host, as written."""
        rule = [
            "OUTPUT", "-p", "tcp", "--dport", str(dport), "-d", self.ip,
            "-m", "owner", "!", "--uid-owner", str(gateway_uid),
            "-j", "REDIRECT", "--to-ports", str(to_port),
        ]  # fmt: skip
        _must(self.iptables, "-t", "nat", "-A", *rule)
        self.rules.append(rule)

    def remove_rules(self) -> None:
        while self.rules:
            _run(self.iptables, "-t", "nat", "-D", *self.rules.pop())


def _local_unit_ip(version: int) -> Iterator[LocalUnit]:
    """A random address of IP ``version`` on ``lo`` (in 198.18.0.0/15, or a random unique
    local /64 for IPv6), so the OUTPUT rule matches nothing but this test's connections; the
    address and every rule are removed afterwards."""
    iptables = "iptables" if version == 4 else "ip6tables"
    if sys.platform != "linux":
        pytest.skip("transparent mode with iptables REDIRECT is Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root: adds an address and iptables rules, runs a client as nobody")
    for tool in ("ip", iptables, "setpriv", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if version == 4:
        benchmarking = ipaddress.ip_network("198.18.0.0/15")
        ip = str(
            benchmarking.network_address + 1 + secrets.randbelow(benchmarking.num_addresses - 2)
        )
        address, flags = f"{ip}/32", ()
    else:
        ip = str(ipaddress.IPv6Address((0xFD << 120) | (secrets.randbits(56) << 64) | 1))
        address, flags = f"{ip}/128", ("nodad",)
    _must("ip", "addr", "add", address, "dev", "lo", *flags)
    local = LocalUnit(ip, iptables)
    try:
        yield local
    finally:
        local.remove_rules()
        _run("ip", "addr", "del", address, "dev", "lo")


@pytest.fixture
def local_unit_ip(request: pytest.FixtureRequest) -> Iterator[LocalUnit]:
    """IPv4, or the IP version a test gives it (``indirect`` parametrization)."""
    yield from _local_unit_ip(getattr(request, "param", 4))


@pytest.fixture
def local_unit(
    local_unit_ip: LocalUnit, run_dir: Path, planted: Planted
) -> Iterator[harness.Sandbox]:
    """The Unit host at the address on ``lo``."""
    yield from _unit_at(local_unit_ip.ip, run_dir, planted)


def _curl_cards(
    unit: harness.Sandbox, ca: Path, run_dir: Path, gateway: harness.Gateway, *prefix: str
) -> tuple[int, dict[str, Any]]:
    """GET /cards as a customer's placeholder with curl (run under ``prefix``, e.g. as
    another user), no proxy settings: the status and the JSON body. Output goes to the run
    directory for the leak scan."""
    argv = [
        *prefix, "curl", "-sS", "--noproxy", "*", "--max-time", "15", "--cacert", str(ca),
        "-H", "Authorization: Bearer unitgw:customer:10001",
        "-w", "\n%{http_code}", f"{unit.url}/cards",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    with (run_dir / "client.output").open("a") as out:
        out.write(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr + gateway.process.output()[-3000:]
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


@pytest.mark.parametrize("local_unit_ip", [4, 6], ids=["ipv4", "ipv6"], indirect=True)
def test_services_on_the_gateway_host_are_redirected_in_output_except_the_gateway_itself(
    local_unit_ip: LocalUnit,
    local_unit: harness.Sandbox,
    gateway_factory: GatewayFactory,
    run_dir: Path,
) -> None:
    # The gateway runs as root here, so the rule excludes uid 0 and the service is curl run
    # as nobody: a process on the same host that knows nothing about a proxy.
    unit = local_unit
    # Locally generated packets are redirected to the loopback address of their family: the
    # gateway listens on 127.0.0.1 and ::1, with the two listeners docs/transparent-mode.md
    # gives.
    listen_port = harness.free_port()
    ipv4, ipv6 = (f"transparent@{host}:{listen_port}" for host in ("127.0.0.1", "::1"))
    gateway = gateway_factory(unit, extra_args=("--mode", ipv4, "--mode", ipv6), name="transparent")
    gateway.process.wait_for(rf"proxy listening on \[::1\]:{listen_port} \(transparent\)")
    port = port_of(unit.url)
    local_unit_ip.redirect_other_users(port, listen_port, 0)

    # nobody cannot enter pytest's private directories: the CA goes where it can read it.
    shared = Path(tempfile.mkdtemp(prefix="unit-gateway-ca-"))
    try:
        shared.chmod(0o755)
        ca = shared / "gateway-ca.pem"
        ca.write_bytes(gateway.ca_path.read_bytes())
        ca.chmod(0o644)
        as_nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        status, cards = _curl_cards(unit, ca, run_dir, gateway, *as_nobody)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert status == 200, cards
    customers = {c["relationships"]["customer"]["data"]["id"] for c in cards["data"]}
    assert customers == {"10001"}
    # The gateway got the connection from this host (its source address is the Unit address
    # itself, the one on lo) and knew where it was going; its own connections to the same
    # address and port (forwarding, minting) were not sent back to it: one customer token,
    # one GET /cards, as with no redirect at all.
    # (mitmdump shows an IPv6 client in brackets, and the URL's IPv6 host without them.)
    unit_url = rf"https://\[?{re.escape(local_unit_ip.ip)}\]?:{port}"
    client = re.escape(url_host(local_unit_ip.ip))
    gateway.process.wait_for(rf"^{client}:\d+: GET {unit_url}/cards", timeout=5)
    stats = unit.stats()
    assert stats["tokens_created"] == {"customer": 1, "cardholder": 0}, "one token, no other"
    assert stats["requests"]["GET /cards"] == 1

    # The gateway's own user is excluded: root's request goes straight to Unit, which refuses
    # a placeholder (no token is put in for it on the way).
    assert unit.cert_path is not None
    status, refused = _curl_cards(unit, unit.cert_path, run_dir, gateway)
    assert status == 401, refused
    assert unit.stats()["requests"]["GET /cards"] == 2
    assert len(re.findall(rf"GET {unit_url}/cards", gateway.process.output())) == 1
    assert unit.stats()["tokens_created"]["customer"] == 1


def test_a_redirect_that_sends_the_gateways_own_connections_back_is_a_clear_error(
    local_unit_ip: LocalUnit,
    local_unit: harness.Sandbox,
    gateway_factory: GatewayFactory,
    run_dir: Path,
) -> None:
    # The OUTPUT rule excludes a user the gateway does not run as: its own connections to
    # Unit come back to it. Without the loop guard each of them made the gateway connect again
    # and it stopped answering (and could not stop cleanly).
    unit = local_unit
    gateway = gateway_factory(unit, mode="transparent", name="transparent")
    port = port_of(unit.url)
    not_the_gateway = 65533
    local_unit_ip.redirect_other_users(port, port_of(gateway.proxy_url), not_the_gateway)
    status, body = _curl_cards(unit, gateway.ca_path, run_dir, gateway)
    error = body["errors"][0]
    assert 500 <= status < 600, body
    assert error["status"] == str(status)
    # The caller learns it is a loop, not a network fault (here the token call looped).
    assert "a redirect rule sent the gateway's own connection back" in error["detail"], error
    gateway.process.wait_for(r"unit-gateway: redirect loop: the gateway's own connection to")
    # Nothing reached Unit: neither the request nor a token request. (The rule would send
    # this test's own request for the counts to the gateway too.)
    local_unit_ip.remove_rules()
    stats = unit.stats()
    assert stats["requests"].get("GET /cards", 0) == 0
    assert stats["tokens_created"].get("customer", 0) == 0
    # What the RedirectLoop alert watches.
    loops = re.search(r"^unit_gateway_redirect_loops_total (\S+)$", gateway.metrics_text(), re.M)
    assert loops is not None and float(loops.group(1)) >= 1
