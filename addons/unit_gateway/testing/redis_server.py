"""A private ``redis-server`` for the shared store's tests and ``unit-gateway demo --replicas``:
loopback only, on a free port, no RDB or AOF file, its log in its own directory, and always
stopped by whoever started it.

Uses the ``redis-server`` on ``PATH`` (Debian: ``apt-get install -y redis-server``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from unit_gateway.testing.harness import free_port as _free_port
from unit_gateway.testing.harness import port_is_free

INSTALL = (
    "{name} is not installed (not on PATH): apt-get install -y redis-server "
    "(Debian's package, with redis-cli)"
)
STARTUP_SECONDS = 15.0


class RedisNotInstalled(RuntimeError):
    """``redis-server`` (or ``redis-cli``) is not on ``PATH``; the message says how to
    install it."""


def redis_binary(name: str = "redis-server") -> str:
    found = shutil.which(name)
    if found is None:
        raise RedisNotInstalled(INSTALL.format(name=name))
    return found


def free_port(*, cluster_bus: bool = False) -> int:
    """A free loopback port; with ``cluster_bus``, port + 10000 is free too (a cluster
    node's node-to-node port)."""
    for _ in range(200):
        port = _free_port()
        if not cluster_bus or (port + 10000 < 65536 and port_is_free(port + 10000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


class RedisProcess:
    """One ``redis-server``, started by the constructor: loopback only, no RDB or AOF file,
    its log in its directory."""

    def __init__(
        self,
        directory: Path,
        *extra: str,
        port: int | None = None,
        tls: TlsFiles | None = None,
        password: str | None = None,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.tls = tls
        self.password = password
        self.port = port or free_port(cluster_bus="--cluster-enabled" in extra)
        self.log = directory / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self.log),
        ]
        if self.tls is not None:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "no",
            ]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err}{self._log_tail()}")
            text = self.log.read_bytes()[offset:] if self.log.exists() else b""
            if b"Ready to accept connections" in text:
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not get ready: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def kill(self) -> None:
        """``kill -9``: Redis goes away mid-run, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def client(self) -> redis.Redis:
        """A plain synchronous client, to look at what the store wrote."""
        kwargs: dict[str, object] = {}
        if self.tls is not None:
            kwargs["ssl_ca_certs"] = str(self.tls.ca)
        return redis.Redis.from_url(self.url, **kwargs)  # type: ignore[arg-type]
