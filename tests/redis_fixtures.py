"""Real Redis for the shared store's tests: ``redis-server`` on a free loopback port without
persistence (``unit_gateway.testing.redis_server``, which the demo uses too), a three-node
Redis Cluster, and Redis with TLS. Processes are always stopped. Registered by the test
modules with ``pytest_plugins``.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from unit_gateway.testing.redis_server import (
    STARTUP_SECONDS,
    RedisNotInstalled,
    RedisProcess,
    TlsFiles,
)
from unit_gateway.testing.redis_server import redis_binary as find_redis_binary


def redis_binary(name: str = "redis-server") -> str:
    """The binary on PATH; the test fails, saying how to install it, when it is missing."""
    try:
        return find_redis_binary(name)
    except RedisNotInstalled as e:
        pytest.fail(f"{e}; the shared-store tests need a real Redis (.ci/run installs it)")


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a certificate for 127.0.0.1 that it signed."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shared-store test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class RedisCluster:
    """Three ``redis-server`` nodes joined by ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes: list[RedisProcess] = []
        try:
            for i in range(size):
                self.nodes.append(
                    RedisProcess(
                        directory / f"node{i}",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    )
                )
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            result = subprocess.run(
                [
                    redis_binary("redis-cli"),
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout}")
            self._wait_ok()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    states.append("cluster_state:ok" in text)
            if all(states):
                return
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def crash(self) -> None:
        """``kill -9`` of every node."""
        for node in self.nodes:
            node.kill()

    def restart(self) -> None:
        """Every node starts again from its ``nodes.conf``: the same cluster, empty."""
        for node in self.nodes:
            node.start()
        self._wait_ok()

    def flush(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def everything_in(clients: list[redis.Redis]) -> list[tuple[bytes, list[bytes]]]:
    """Every key in these Redis nodes with everything it holds (strings, hashes, sets, sorted
    sets with their scores), read with a plain client, to look for what must not be there."""
    found: list[tuple[bytes, list[bytes]]] = []
    for client in clients:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                values = [client.get(key)]
            elif kind == "hash":
                values = [b for pair in client.hgetall(key).items() for b in pair]
            elif kind == "set":
                values = list(client.smembers(key))
            elif kind == "zset":
                values = [
                    b
                    for member, score in client.zrange(key, 0, -1, withscores=True)
                    for b in (member, str(score).encode())
                ]
            else:
                raise AssertionError(f"unexpected {kind} at {key!r}")
            found.append((key, [v for v in values if v is not None]))
    return found


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    redis_binary()  # a missing one fails the test with how to install it
    server = RedisProcess(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    redis_binary()
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_module: RedisCluster) -> RedisCluster:
    """The module's cluster, emptied for this test."""
    redis_cluster_module.flush()
    return redis_cluster_module
