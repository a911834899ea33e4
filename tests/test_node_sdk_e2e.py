"""Unit's Node SDK (@unit-finance/unit-node-sdk) as a second real client through the gateway.

`.ci/run` installs it with npm into tests/node/; outside CI the test is skipped, with the
command to run, when it is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import GatewayFactory, Planted, unit_stats
from unit_gateway.testing import harness

NODE_DIR = Path(__file__).parent / "node"
SDK = NODE_DIR / "node_modules" / "@unit-finance" / "unit-node-sdk"


def test_node_sdk_through_the_gateway(
    gateway_factory: GatewayFactory, tls_sandbox: harness.Sandbox, planted: Planted
) -> None:
    if shutil.which("node") is None or not SDK.exists():
        if os.environ.get("CI"):
            pytest.fail("Unit's Node SDK is not installed: .ci/run must run npm install")
        pytest.skip("run `npm install --prefix tests/node` to install Unit's Node SDK")
    gateway = gateway_factory(tls_sandbox, name="node-gateway")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "UNIT_BASE_URL": tls_sandbox.url,
        "HTTPS_PROXY": gateway.proxy_url,
        "HTTP_PROXY": gateway.proxy_url,
        "NODE_EXTRA_CA_CERTS": str(gateway.ca_path),
    }
    result = subprocess.run(
        ["node", str(NODE_DIR / "client.js")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=NODE_DIR,
    )
    # What the Node client printed is an output too: scanned with the run's files.
    planted.blobs.append(("node client output", (result.stdout + result.stderr).encode()))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["cardCustomers"] and set(seen["cardCustomers"]) == {"10001"}
    assert seen["customers"] > 1
    assert seen["refused"] == {"status": "401", "code": "invalid_placeholder"}
    assert "v2.public." not in result.stdout + result.stderr
    unit_stats(tls_sandbox, customer_tokens=1)
