"""Starting and stopping the sandbox, standalone (``unit-gateway sandbox``) or embedded.

:func:`start` works inside an already-running event loop (the gateway runs the sandbox in
mitmproxy's loop); :func:`run_from_args` owns a loop and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .app import SandboxApp
from .context import SandboxState
from .faults import FaultError, Faults
from .tls import write_certificates

ORG_TOKEN_ENV = "UNIT_SANDBOX_ORG_TOKEN"


@dataclass
class SandboxSettings:
    host: str = "127.0.0.1"
    port: int = 8181  # 0: pick a free port
    tls: bool = False
    cert_dir: Path | None = None  # None: a temporary directory, removed on stop
    org_token: str | None = None  # None: generate one (and print it)
    rate_limit_per_minute: int = 1000  # per client IP; 0 = no limit
    rate_limit_headers: bool = False
    latency_ms: float = 0.0
    error_rate: float = 0.0
    token_outage: bool = False
    jwt_public_key: Path | None = None
    access_log: bool = False

    def faults(self) -> Faults:
        faults = Faults(
            latency_ms=self.latency_ms,
            error_rate=self.error_rate,
            token_outage=self.token_outage,
            rate_limit_per_minute=self.rate_limit_per_minute,
            rate_limit_headers=self.rate_limit_headers,
        )
        faults.validate()
        return faults


class RunningSandbox:
    def __init__(
        self,
        runner: web.ServerRunner,
        state: SandboxState,
        url: str,
        port: int,
        cert_path: Path | None,
        temp_dir: Path | None,
    ) -> None:
        self._runner = runner
        self.state = state
        self.url = url
        self.port = port
        self.cert_path = cert_path
        self._temp_dir = temp_dir

    @property
    def org_token(self) -> str:
        return self.state.authority.org_token

    @property
    def generated_org_token(self) -> bool:
        return self.state.authority.generated_org_token

    async def stop(self) -> None:
        await self._runner.cleanup()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def url_host(host: str) -> str:
    """``host`` as a URL names it: an IPv6 address in brackets, a wildcard as loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:  # listening everywhere: loopback is one of the addresses
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{host}]" if address.version == 6 else host


async def start(settings: SandboxSettings) -> RunningSandbox:
    """Start serving in the running event loop. Raises OSError if it cannot listen and
    ValueError for bad settings."""
    try:
        faults = settings.faults()
    except FaultError as e:
        raise ValueError(str(e)) from None
    state = SandboxState(
        org_token=settings.org_token,
        faults=faults,
        jwt_public_key=settings.jwt_public_key,
        access_log=settings.access_log,
    )
    runner = web.ServerRunner(
        SandboxApp(state).make_server(), handle_signals=False, shutdown_timeout=5.0
    )
    await runner.setup()
    temp_dir: Path | None = None
    cert_path: Path | None = None
    ssl_context = None
    try:
        if settings.tls:
            cert_dir = settings.cert_dir
            if cert_dir is None:
                cert_dir = temp_dir = Path(tempfile.mkdtemp(prefix="unit-sandbox-tls-"))
            files = write_certificates(cert_dir, settings.host)
            cert_path, ssl_context = files.ca_cert, files.server_context()
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=ssl_context,
            backlog=1024,
            reuse_address=True,
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    port = runner.addresses[0][1]
    scheme = "https" if settings.tls else "http"
    url = f"{scheme}://{url_host(settings.host)}:{port}"
    return RunningSandbox(runner, state, url, port, cert_path, temp_dir)


# --- command line -----------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8181,
        help="port to listen on; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a generated certificate"
    )
    parser.add_argument(
        "--cert-dir",
        type=Path,
        help="where --tls writes its certificates (default: a temporary directory)",
    )
    parser.add_argument(
        "--org-token",
        help=f"the org token to accept (default: ${ORG_TOKEN_ENV}, else a generated one, "
        "printed once)",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=1000,
        metavar="N",
        help="requests per minute per client IP before 429; 0 = unlimited (default %(default)s)",
    )
    parser.add_argument(
        "--rate-limit-headers",
        action="store_true",
        help="send X-RateLimit-* headers and Retry-After (Unit documents none)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added latency per API request"
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        help="fraction of API requests answered 500/503 (0..1)",
    )
    parser.add_argument("--token-outage", action="store_true", help="token endpoints answer 503")
    parser.add_argument(
        "--jwt-public-key",
        type=Path,
        help="PEM public key that customers' JWTs (RS256/ES256) must verify with",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request (route template, status, time)",
    )


def settings_from_args(args: argparse.Namespace) -> SandboxSettings:
    org_token = (args.org_token or os.environ.get(ORG_TOKEN_ENV) or "").strip() or None
    return SandboxSettings(
        host=args.host,
        port=args.port,
        tls=args.tls,
        cert_dir=args.cert_dir,
        org_token=org_token,
        rate_limit_per_minute=args.rate_limit,
        rate_limit_headers=args.rate_limit_headers,
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        token_outage=args.token_outage,
        jwt_public_key=args.jwt_public_key,
        access_log=args.access_log,
    )


async def _serve_until_signalled(settings: SandboxSettings) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        sandbox = await start(settings)
    except OSError as e:
        where = f"{settings.host}:{settings.port}"
        print(f"unit-gateway sandbox: cannot listen on {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"unit-gateway sandbox: {e}", file=sys.stderr)
        return 2
    try:
        if sandbox.cert_path is not None:
            print(f"certificate: {sandbox.cert_path}")
        if sandbox.generated_org_token:
            # Only a token nobody gave us: a token passed in is never echoed.
            print(f"org token: {sandbox.org_token}")
        # Printed last, once the socket accepts connections: the readiness signal.
        print(f"unit-gateway sandbox listening on {sandbox.url}", flush=True)
        await stopping.wait()
    finally:
        # A repeated SIGTERM or Ctrl-C while requests finish (up to the shutdown timeout)
        # would find the default handler once the loop's is gone, and kill the process (or
        # raise KeyboardInterrupt in it): both are ignored now.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
        await sandbox.stop()
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings.jwt_public_key is not None and not settings.jwt_public_key.is_file():
        print(
            f"unit-gateway sandbox: --jwt-public-key {settings.jwt_public_key}: no such file",
            file=sys.stderr,
        )
        return 2
    if settings.access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s sandbox %(message)s"))
        access = logging.getLogger("unit_gateway.sandbox.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    try:
        return asyncio.run(_serve_until_signalled(settings))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 0
