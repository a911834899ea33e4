"""A token goes only where a request is sent, whatever its Host header says (regular mode).

Through the proxy a caller asks for an absolute URL on another server and names the Unit host
in its Host header. The other server listens on the Unit host's port, on another loopback
address: before the fix (b2f3727) the gateway matched the upstream on the Host header's name
and the request's port, injected a real Unit token and sent it to the other server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import GatewayFactory, Planted, planted_sandbox, proxied_session
from unit_gateway.net import jsonapi
from unit_gateway.testing import harness

pytestmark = pytest.mark.timeout(60)

#: What the other server accepts as its own org token: a real token of the caller's, in
#: Unit's shape, that is not the gateway's business.
CALLER_TOKEN = "v2.public.eyJjYWxsZXIiOiJvd24gdG9rZW4ifQ.Y2FsbGVyLXNpZ25hdHVyZS1ieXRlcw"


@pytest.fixture
def other_server(
    run_dir: Path, sandbox: harness.Sandbox, planted: Planted
) -> Iterator[harness.Sandbox]:
    """A second plain-http sandbox, not an upstream of the gateway, on 127.0.0.2 and the
    Unit host's port (the later ``--host``/``--port`` flags override the harness's)."""
    port = urlsplit(sandbox.url).port
    assert port is not None
    with planted_sandbox(
        run_dir,
        planted,
        "the caller's own token (other server)",
        name="other",
        org_token=CALLER_TOKEN,
        extra_args=["--host", "127.0.0.2", "--port", str(port)],
    ) as box:
        yield box


def get_cards(
    session: requests.Session, server: harness.Sandbox, host: str, token: str
) -> requests.Response:
    return session.get(
        server.url + "/cards", headers={"Host": host, "Authorization": f"Bearer {token}"}
    )


def test_a_host_header_naming_unit_gets_no_token_sent_elsewhere(
    gateway_factory: GatewayFactory,
    sandbox: harness.Sandbox,
    other_server: harness.Sandbox,
) -> None:
    unit = urlsplit(sandbox.url)
    other = urlsplit(other_server.url)
    assert (other.hostname, other.port) == ("127.0.0.2", unit.port)
    gateway = gateway_factory(sandbox)

    with proxied_session(gateway) as session:
        # A placeholder on a request to the other server, whose Host header names Unit: the
        # gateway answers itself; nothing is minted, nothing is sent.
        refused = get_cards(session, other_server, unit.netloc, "unitgw:customer:10001")
        assert refused.status_code == 403, refused.text
        assert refused.headers["Content-Type"] == jsonapi.MEDIA_TYPE
        assert refused.json()["errors"][0]["code"] == "placeholder_for_unknown_host"
        assert other_server.stats()["total_requests"] == 0
        stats = sandbox.stats()
        assert stats["total_requests"] == 0
        assert stats["tokens_created"] == {"customer": 0, "cardholder": 0}

        # A real token of the caller's own goes to the server the request is sent to,
        # untouched: the other server accepts exactly that value as its org token.
        passed = get_cards(session, other_server, unit.netloc, CALLER_TOKEN)
        assert passed.status_code == 200, passed.text
        assert passed.json()["data"]
        other_stats = other_server.stats()
        assert other_stats["requests"] == {"GET /cards": 1}
        assert other_stats["responses"] == {"200": 1}
        assert sandbox.stats()["total_requests"] == 0
