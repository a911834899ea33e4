"""Real processes for end-to-end tests and benchmarks: the local sandbox, the gateway, bare
mitmdump. Each runs as a subprocess on free loopback ports, writes its output to files in a
run directory (so the leak scanner can read every byte of it) and is always stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unit_gateway.sandbox.server import url_host

#: host and port of a listening line: an IPv6 host is in brackets (left out of the group).
_LISTEN_ADDRESS = r"\[?([^\]\s]+?)\]?:(\d+)(?=[\s.]|$)"

#: Every process started here, so a crashed test cannot leave one behind.
_live: list[ManagedProcess] = []


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def seed_pans() -> dict[str, str]:
    """The seeded cards' numbers, card id -> PAN: the same in every sandbox (tests plant
    them for the leak scan)."""
    from unit_gateway.sandbox.data import SandboxData

    return {card: held.pan for card, held in SandboxData().card_secrets.items()}


def make_org_token() -> str:
    """A random org token in Unit's shape; planted so the leak scanner can look for it."""
    return "v2.public." + secrets.token_urlsafe(96)


class ProcessFailed(RuntimeError):
    pass


@dataclass
class ManagedProcess:
    """A subprocess whose stdout and stderr go to ``<run_dir>/<name>.stdout|.stderr``."""

    name: str
    argv: list[str]
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def stdout_path(self) -> Path:
        return self.run_dir / f"{self.name}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.run_dir / f"{self.name}.stderr"

    def start(self) -> ManagedProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
            )
        _live.append(self)
        return self

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until stdout or stderr has a line matching ``pattern``."""
        assert self.proc is not None
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                raise ProcessFailed(
                    f"{self.name} exited with {self.proc.returncode} before printing "
                    f"{pattern!r}:\n{self.output()[-4000:]}"
                )
            time.sleep(0.05)
        raise ProcessFailed(
            f"{self.name} did not print {pattern!r} in {timeout}s:\n{self.output()}"
        )

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit status."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            # Repeated: asyncio drops a signal that arrives while its wake-up pipe is full,
            # as it can be for a moment after a burst of connection events in mitmproxy.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(min(2.0, max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self in _live:
            _live.remove(self)
        return self.proc.returncode


def stop_all() -> None:
    for process in list(_live):
        process.stop(timeout=5)


def python_command(*args: str) -> list[str]:
    """Run the ``unit-gateway`` CLI of this interpreter's environment."""
    return [sys.executable, "-m", "unit_gateway.cli", *args]


@dataclass
class Sandbox:
    process: ManagedProcess
    url: str
    org_token: str
    cert_path: Path | None

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "/__sandbox/stats")

    def faults(self, **changes: Any) -> dict[str, Any]:
        return self.admin("POST", "/__sandbox/faults", changes)

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return sandbox_admin(self.url, method, path, body, cert_path=self.cert_path)


def sandbox_admin(
    url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    cert_path: Path | None = None,
) -> Any:
    """Call one of the sandbox's ``/__sandbox`` controls directly, never through a proxy."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    context = None
    if cert_path is not None:
        import ssl

        context = ssl.create_default_context(cafile=str(cert_path))
    # The sandbox is on loopback: never let a proxy from the environment get in between.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())


def start_sandbox(
    run_dir: Path,
    *,
    org_token: str | None = None,
    tls: bool = False,
    extra_args: Sequence[str] = (),
    name: str = "sandbox",
) -> Sandbox:
    """Start ``unit-gateway sandbox`` on a free port. The org token goes in by environment."""
    org_token = org_token or make_org_token()
    argv = python_command("sandbox", "--host", "127.0.0.1", "--port", "0", *extra_args)
    if tls:
        argv.append("--tls")
    process = ManagedProcess(name, argv, run_dir, env={"UNIT_SANDBOX_ORG_TOKEN": org_token}).start()
    url = process.wait_for(r"^unit-gateway sandbox listening on (\S+)$").group(1)
    cert = Path(process.wait_for(r"^certificate: (\S+)$").group(1)) if tls else None
    return Sandbox(process, url, org_token, cert)


def write_gateway_config(
    path: Path,
    *,
    upstream_url: str,
    org_token_env: str = "UNIT_ORG_TOKEN",
    metrics_port: int = 0,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """A configuration for a gateway in front of a local sandbox, with deep-merged overrides."""
    document: dict[str, Any] = {
        "unit": {
            "upstreams": [{"url": upstream_url, "environment": "sandbox"}],
            "org_token": {"env": org_token_env},
            "allow_plain_http_loopback": upstream_url.startswith("http://"),
        },
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
    }
    _merge(document, overrides or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def store_overrides(directory: Path, url: str) -> dict[str, Any]:
    """A gateway configuration's ``store`` section for the Redis at ``url``: the URL and a new
    key in files in ``directory``, beside the configuration (secret references, as in
    production)."""
    from unit_gateway.tokens.store import new_key

    (directory / "store-url").write_text(url)
    key_file = directory / "store-key"
    key_file.touch(mode=0o600)
    key_file.write_text(new_key())
    return {"store": {"url": {"file": "store-url"}, "key": {"file": "store-key"}}}


async def spread_requests(
    proxy_urls: Sequence[str], url: str, placeholder: str, count: int
) -> list[int]:
    """``count`` concurrent GETs of ``url`` with ``placeholder`` as the bearer token, dealt
    over the proxies (gateway replicas) in turn; their statuses in that order."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def one(index: int) -> int:
            proxy = proxy_urls[index % len(proxy_urls)]
            headers = {"Authorization": f"Bearer {placeholder}"}
            async with session.get(url, proxy=proxy, headers=headers) as response:
                await response.read()
                return response.status

        return await asyncio.gather(*(one(i) for i in range(count)))


@dataclass
class Gateway:
    process: ManagedProcess
    proxy_url: str
    ca_path: Path
    confdir: Path
    metrics_url: str | None

    def metrics_text(self) -> str:
        assert self.metrics_url is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.metrics_url, timeout=10) as response:
            return response.read().decode()


def gateway_command(
    config_path: Path,
    *,
    mode: str | None = None,
    web: bool = False,
    mitmproxy_args: Sequence[str] = (),
) -> list[str]:
    """``unit-gateway run`` on 127.0.0.1 and a free port the proxy picks (its log line
    ``proxy listening on`` says which)."""
    argv = python_command(
        "run", "--config", str(config_path), "--listen-host", "127.0.0.1", "--listen-port", "0"
    )
    if mode:
        argv += ["--mode", mode]
    if web:
        argv.append("--web")
    return [*argv, "--", *mitmproxy_args]


def start_gateway(
    run_dir: Path,
    config_path: Path,
    *,
    org_token: str | None,
    mode: str | None = None,
    extra_args: Sequence[str] = (),
    upstream_ca: Path | None = None,
    name: str = "gateway",
    web: bool = False,
) -> Gateway:
    """Start ``unit-gateway run`` (mitmdump, or mitmweb with ``web``) on a free port."""
    confdir = run_dir / f"{name}-confdir"
    confdir.mkdir(parents=True, exist_ok=True)
    mitmproxy_args = ["--set", f"confdir={confdir}", *extra_args]
    if upstream_ca is not None:
        mitmproxy_args += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
    argv = gateway_command(config_path, mode=mode, web=web, mitmproxy_args=mitmproxy_args)
    env = {"UNIT_ORG_TOKEN": org_token} if org_token else {}
    process = ManagedProcess(name, argv, run_dir, env=env).start()
    host, port = process.wait_for(rf"unit-gateway: proxy listening on {_LISTEN_ADDRESS}").groups()
    metrics = None
    config = yaml.safe_load(config_path.read_text())
    if config.get("metrics", {}).get("enabled", True):
        metrics = process.wait_for(r"unit-gateway: metrics on (\S+)").group(1)
    process.wait_for(r"unit-gateway: CA certificate")
    return Gateway(
        process,
        f"http://{url_host(host)}:{port}",
        confdir / "mitmproxy-ca-cert.pem",
        confdir,
        metrics,
    )


def start_bare_mitmdump(
    run_dir: Path,
    *,
    extra_args: Sequence[str] = (),
    name: str = "mitmdump",
    env: dict[str, str] | None = None,
) -> Gateway:
    """mitmdump with no addons of ours (the baseline every benchmark compares against), or
    with the scripts ``extra_args`` loads; in regular mode unless ``extra_args`` says
    otherwise (``proxy_url`` is then the address it listens on)."""
    confdir = run_dir / f"{name}-confdir"
    confdir.mkdir(parents=True, exist_ok=True)
    tool = Path(sys.executable).parent / "mitmdump"
    argv = [
        str(tool),
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        "0",
        "--set",
        f"confdir={confdir}",
        *extra_args,
    ]
    process = ManagedProcess(name, argv, run_dir, env=env or {}).start()
    # "HTTP(S) proxy listening at …", "reverse proxy to … listening at …"
    host, port = process.wait_for(rf"proxy (?:to \S+ )?listening at {_LISTEN_ADDRESS}").groups()
    return Gateway(
        process, f"http://{url_host(host)}:{port}", confdir / "mitmproxy-ca-cert.pem", confdir, None
    )
