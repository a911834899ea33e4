"""The README's first command: the gateway with the local sandbox inside it."""

from __future__ import annotations

from pathlib import Path

import requests
import yaml

from conftest import Planted, proxied_session
from unit_gateway.testing import harness

REPO = Path(__file__).resolve().parent.parent


def test_local_configuration_runs_the_embedded_sandbox(run_dir: Path, planted: Planted) -> None:
    # config/local.yaml as shipped, moved to free ports so the test cannot collide.
    document = yaml.safe_load((REPO / "config" / "local.yaml").read_text())
    port = harness.free_port()
    document["unit"]["upstreams"][0]["url"] = f"http://127.0.0.1:{port}"
    document["sandbox"]["port"] = port
    document["metrics"]["port"] = 0
    config = run_dir / "local.yaml"
    config.write_text(yaml.safe_dump(document))

    gateway = harness.start_gateway(run_dir, config, org_token=None)
    # Its org token is made up inside the gateway: any Unit token at all is planted for it,
    # before any traffic, so a failed assertion still leaves the scan something to look for.
    planted.add_sandbox_inside("the embedded sandbox")
    try:
        assert f"unit-gateway: embedded sandbox on http://127.0.0.1:{port}" in (
            gateway.process.output()
        )
        upstream = f"http://127.0.0.1:{port}"
        with proxied_session(gateway) as session:
            org = session.get(upstream + "/cards", headers={"Authorization": "Bearer unitgw:org"})
            assert org.status_code == 200 and org.json()["data"]
            customer = session.get(
                upstream + "/cards", headers={"Authorization": "Bearer unitgw:customer:10001"}
            )
            assert customer.status_code == 200
            assert {
                c["relationships"]["customer"]["data"]["id"] for c in customer.json()["data"]
            } == {"10001"}
            assert b"v2.public." not in org.content + customer.content
        # The tokens the embedded sandbox issued are planted: no output may show them.
        issued = planted.add_issued(upstream, "embedded sandbox")
        assert issued["tokens"], "the customer token was minted"
        # The sandbox is only reachable as Unit would be: a request without the gateway's
        # injected token is refused.
        direct = requests.get(upstream + "/cards", headers={"Authorization": "Bearer unitgw:org"})
        assert direct.status_code == 401
    finally:
        assert gateway.process.stop() == 0
    assert harness.port_is_free(port), "the embedded sandbox stopped with the gateway"
