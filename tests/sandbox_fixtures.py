"""Fixtures for the local sandbox's own tests: real sandbox subprocesses, always stopped.

The sandbox is started with ``sys.executable`` through ``server.run_from_args`` (what
``unit-gateway sandbox`` runs), on a free port, with the org token in the environment.
Registered by the test modules with ``pytest_plugins``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from unit_gateway.sandbox.faults import Faults
from unit_gateway.testing.harness import make_org_token, seed_pans
from unit_gateway.testing.leakscan import assert_no_leaks

LAUNCH = (
    "import argparse, sys\n"
    "from unit_gateway.sandbox.server import configure_parser, run_from_args\n"
    "parser = argparse.ArgumentParser()\n"
    "configure_parser(parser)\n"
    "sys.exit(run_from_args(parser.parse_args(sys.argv[1:])))\n"
)
LISTENING = re.compile(r"^unit-gateway sandbox listening on (\S+)$")
API = "application/vnd.api+json"


class SandboxProcess:
    """``unit-gateway sandbox`` as a subprocess, read line by line."""

    def __init__(self, *args: str, org_token: str | None = None, env_token: bool = True) -> None:
        self.args = ["--port", "0", *args]
        self.given_org_token = org_token
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("UNIT_SANDBOX_ORG_TOKEN", None)
        if org_token is not None and env_token:
            env["UNIT_SANDBOX_ORG_TOKEN"] = org_token
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.url = self._wait_for_listening()
        self.org_token = org_token or self._printed("org token: ")
        certificate = self._printed("certificate: ")
        self.cert_path = Path(certificate) if certificate else None
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only: never through a proxy from the environment
        if self.cert_path is not None:
            self.http.verify = str(self.cert_path)

    @staticmethod
    def _pump(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def _wait_for_listening(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stdout:
                match = LISTENING.match(line)
                if match:
                    return match.group(1)
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the readers drain
                raise RuntimeError(f"sandbox exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError(f"sandbox did not start: {self.output()}")

    def _printed(self, prefix: str) -> str | None:
        for line in self.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None

    def output(self) -> str:
        return "\n".join(self.stdout + self.stderr)

    def secrets(self) -> dict[str, str]:
        """What this sandbox's output must never show: its org token (unless it made one up
        and printed it, as it does on purpose), every token it issued, the seeded PANs."""
        found = {f"PAN of card {card}": pan for card, pan in seed_pans().items()}
        if self.given_org_token:
            found["org token"] = self.given_org_token
        if self.proc.poll() is None:
            issued = self.control("GET", "issued")
            for i, token in enumerate(issued["tokens"] + issued["verificationTokens"]):
                found[f"issued token {i + 1}"] = token
        return found

    def stop_and_scan(self) -> int:
        """Stop, then scan everything the sandbox printed for its secrets."""
        secrets = self.secrets()
        code = self.stop()
        assert_no_leaks(secrets, blobs=[("sandbox output", self.output().encode())])
        return code

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        self.http.close()
        return self.proc.returncode

    # --- HTTP helpers -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        all_headers = {"Content-Type": API} if body is not None else {}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        return self.http.request(
            method, self.url + path, json=body, headers=all_headers, timeout=30, **kwargs
        )

    def org(self, method: str, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request(method, path, self.org_token, body, **kwargs)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, self.url + "/__sandbox/" + path, json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.control("GET", "stats")
        return stats

    def faults(self, **changes: Any) -> dict[str, Any]:
        faults: dict[str, Any] = self.control("POST", "faults", changes)
        return faults

    def advance(self, seconds: float) -> None:
        self.control("POST", "clock", {"advance_seconds": seconds})

    def reset(self) -> None:
        self.control("POST", "reset")
        self.faults(**Faults().as_json())  # every switch back to its default

    # --- Unit flows ---------------------------------------------------------------------------

    def verification(self, customer_id: str) -> str:
        response = self.org(
            "POST",
            f"/customers/{customer_id}/token/verification",
            {"data": {"type": "customerTokenVerification", "attributes": {"channel": "sms"}}},
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["data"]["attributes"]["verificationToken"]
        return token

    def customer_token(self, customer_id: str, scope: str, **attributes: Any) -> requests.Response:
        body = {"data": {"type": "customerToken", "attributes": {"scope": scope, **attributes}}}
        return self.org("POST", f"/customers/{customer_id}/token", body)

    def customer_token_2fa(self, customer_id: str, scope: str, **attributes: Any) -> str:
        response = self.customer_token(
            customer_id,
            scope,
            verificationToken=self.verification(customer_id),
            verificationCode="000001",
            **attributes,
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["data"]["attributes"]["token"]
        return token

    def plain_customer_token(self, customer_id: str, scope: str, **attributes: Any) -> str:
        response = self.customer_token(customer_id, scope, **attributes)
        assert response.status_code == 201, response.text
        token: str = response.json()["data"]["attributes"]["token"]
        return token

    def cardholder_token(self, card_id: str, scope: str, **attributes: Any) -> requests.Response:
        body = {"data": {"type": "cardholderToken", "attributes": {"scope": scope, **attributes}}}
        return self.org("POST", f"/cards/{card_id}/cardholder/token", body)

    def cardholder_verification(self, card_id: str) -> requests.Response:
        return self.org(
            "POST",
            f"/cards/{card_id}/cardholder/token/verification",
            {"data": {"type": "cardholderTokenVerification", "attributes": {"channel": "sms"}}},
        )


class SandboxFactory:
    """Starts sandboxes for one test and stops every one of them afterwards."""

    def __init__(self) -> None:
        self.started: list[SandboxProcess] = []

    def __call__(self, *args: str, org_token: str | None = "", **kwargs: Any) -> SandboxProcess:
        token = make_org_token() if org_token == "" else org_token
        box = SandboxProcess(*args, org_token=token, **kwargs)
        self.started.append(box)
        return box

    def stop_all(self) -> list[tuple[SandboxProcess, int]]:
        return [(box, box.stop_and_scan()) for box in self.started]


@pytest.fixture
def start_sandbox() -> Iterator[SandboxFactory]:
    factory = SandboxFactory()
    yield factory
    for box, code in factory.stop_all():
        assert code == 0, box.output()


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[SandboxProcess]:
    box = SandboxProcess(org_token=make_org_token())
    yield box
    assert box.stop_and_scan() == 0, box.output()


@pytest.fixture
def box(shared_sandbox: SandboxProcess) -> SandboxProcess:
    """The module's sandbox, with stats, limits, clock and faults back at their defaults."""
    shared_sandbox.reset()
    return shared_sandbox
