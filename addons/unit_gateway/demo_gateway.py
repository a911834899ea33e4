"""The gateway the demo runs: its configuration, starting it and waiting until it listens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .testing import harness

#: The cardholder token's lifetime in the demo: short enough to watch it expire.
CARDHOLDER_LIFETIME = 3
EXPIRY_MARGIN = 1
START_TIMEOUT = 30.0
ORG_TOKEN_ENV = "UNIT_ORG_TOKEN"


def demo_config(
    sandbox_port: int,
    metrics_port: int,
    *,
    embedded: bool = True,
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The local configuration (config/local.yaml) with a short-lived cardholder token: with
    the sandbox embedded, or (replicas) in front of a sandbox of its own and with a store."""
    config: dict[str, Any] = {
        "unit": {
            "upstreams": [{"url": f"http://127.0.0.1:{sandbox_port}", "environment": "sandbox"}],
            # Made up by the demo and shared with the embedded sandbox, so the output scan
            # can look for it too.
            "org_token": {"env": ORG_TOKEN_ENV},
            "allow_plain_http_loopback": True,
            "missing_authorization": "reject",
        },
        "sandbox": {"embedded": True, "host": "127.0.0.1", "port": sandbox_port},
        "tokens": {
            "expiry_margin_seconds": EXPIRY_MARGIN,
            # No refresh ahead: the demo shows a token running out and a new one taking over.
            "refresh_ahead_seconds": 0,
            "customer": {
                "default_scopes": ["customers", "accounts", "cards", "transactions"],
                "expires_in": 3600,
                "two_factor": "sandbox-otp",
            },
            "cardholder": {
                "default_scopes": ["cards"],
                "expires_in": CARDHOLDER_LIFETIME + EXPIRY_MARGIN,
                "two_factor": "sandbox-otp",
            },
        },
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
    }
    if not embedded:
        del config["sandbox"]
    if store is not None:
        config["store"] = store
    return config


@dataclass
class Environment:
    """The running gateway (with its embedded sandbox) and where it writes."""

    run_dir: Path
    process: harness.ManagedProcess
    proxy_url: str
    sandbox_url: str
    metrics_url: str
    flows_path: Path
    web_url: str | None = None

    def sandbox(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return harness.sandbox_admin(self.sandbox_url, method, path, body)

    def stats(self) -> dict[str, Any]:
        return self.sandbox("GET", "/__sandbox/stats")


def start(run_dir: Path, org_token: str, *, web: bool) -> Environment:
    """One gateway with the sandbox embedded."""
    sandbox_port, metrics_port = harness.free_port(), harness.free_port()
    config = demo_config(sandbox_port, metrics_port)
    return attach(launch(run_dir, "gateway", config, org_token, web=web), web=web)


@dataclass
class Launched:
    """A gateway process started, not yet listening."""

    process: harness.ManagedProcess
    flows_path: Path
    sandbox_url: str | None


def launch(
    run_dir: Path,
    name: str,
    config: dict[str, Any],
    org_token: str,
    *,
    web: bool = False,
    sandbox_url: str | None = None,
    extra_args: list[str] | None = None,
) -> Launched:
    """Start ``unit-gateway run`` with ``config`` (written to ``<run_dir>/<name>.yaml``; the
    single gateway's is ``demo.yaml``); ``sandbox_url`` is a sandbox outside it, if any."""
    config_path = run_dir / ("demo.yaml" if name == "gateway" else f"{name}.yaml")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    flows_path = run_dir / ("flows.mitm" if name == "gateway" else f"{name}.flows.mitm")
    # flow_detail=3: headers and bodies in the output, so one can see what redaction leaves.
    mitmproxy_args = ["--set", f"save_stream_file={flows_path}", "--set", "flow_detail=3"]
    if web:
        mitmproxy_args += [
            "--set", f"web_port={harness.free_port()}", "--set", "web_open_browser=false",
        ]  # fmt: skip
    mitmproxy_args += extra_args or []
    argv = harness.gateway_command(config_path, web=web, mitmproxy_args=mitmproxy_args)
    env = {ORG_TOKEN_ENV: org_token}
    process = harness.ManagedProcess(name, argv, run_dir, env=env).start()
    return Launched(process, flows_path, sandbox_url)


def attach(launched: Launched, *, web: bool = False) -> Environment:
    """Wait until a launched gateway listens; stopped if it does not."""
    process = launched.process
    try:
        host, port = process.wait_for(
            r"unit-gateway: proxy listening on (\S+):(\d+)", START_TIMEOUT
        ).groups()
        sandbox_url = launched.sandbox_url or process.wait_for(
            r"unit-gateway: embedded sandbox on (\S+)", START_TIMEOUT
        ).group(1)
        metrics_url = process.wait_for(r"unit-gateway: metrics on (\S+)", START_TIMEOUT)
        web_url = None
        if web:
            web_url = process.wait_for(r"Web server listening at (\S+)", START_TIMEOUT).group(1)
    except BaseException:  # it did not start, or Ctrl-C
        process.stop()
        raise
    return Environment(
        process.run_dir,
        process,
        f"http://{host}:{port}",
        sandbox_url,
        metrics_url.group(1),
        launched.flows_path,
        web_url,
    )


@contextmanager
def proxied(proxy_url: str) -> Iterator[None]:
    """Unit's SDK sends with ``requests``, which takes its proxy from the environment."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ["HTTP_PROXY"] = os.environ["HTTPS_PROXY"] = proxy_url
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
