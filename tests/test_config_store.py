"""The `store` section: validated like every other section, its secrets resolved, and no
problem message ever quotes the URL (it may hold the password). No Redis needed here."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from unit_gateway.config import schema as config
from unit_gateway.config.schema import ConfigError
from unit_gateway.tokens.store import SharedStore

UPSTREAM = {"url": "https://api.s.unit.sh", "environment": "sandbox"}
KEY = base64.b64encode(bytes(range(32))).decode()
OLD_KEY = base64.b64encode(bytes(range(1, 33))).decode()
PASSWORD = "hunter2-redis-password"


def document(**store: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"url": {"env": "STORE_URL"}, "key": {"env": "STORE_KEY"}}
    section.update(store)
    doc: dict[str, Any] = {
        "unit": {"upstreams": [UPSTREAM], "org_token": {"env": "ORG"}},
        "store": section,
    }
    return doc


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORG", "v2.public.test-org-token")
    monkeypatch.setenv("STORE_URL", f"rediss://gateway:{PASSWORD}@redis.internal:6380/0")
    monkeypatch.setenv("STORE_KEY", KEY)
    monkeypatch.setenv("STORE_OLD_KEY", OLD_KEY)


def problems(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch, url: str | None = None):
    if url is not None:
        monkeypatch.setenv("STORE_URL", url)
    with pytest.raises(ConfigError) as e:
        config.validate(doc, base_dir=Path("."))
    for problem in e.value.problems:
        assert PASSWORD not in problem
    return e.value.problems


def test_without_store_nothing_changes() -> None:
    loaded = config.validate(
        {"unit": {"upstreams": [UPSTREAM], "org_token": {"env": "ORG"}}}, base_dir=Path(".")
    )
    assert loaded.model.store is None
    assert not any(name.startswith("store.") for name in loaded.secrets)
    assert SharedStore.from_config(loaded) is None


def test_store_section_resolves_and_builds_a_store(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    doc = document(previous_key={"env": "STORE_OLD_KEY"}, ca_file="ca.pem", cluster=True)
    path.write_text(yaml.safe_dump(doc))
    loaded = config.load(path)
    settings = loaded.model.store
    assert settings is not None
    assert settings.operation_timeout_seconds == 0.25
    assert settings.key_prefix == "unitgw:"
    assert settings.mint_lease_seconds == 15.0
    assert PASSWORD not in repr(loaded.secrets)
    assert config.store_key(loaded.secrets["store.key"]) == bytes(range(32))
    # Built without connecting: nothing is reached until the first call.
    store = SharedStore.from_config(loaded)
    assert store is not None
    assert store.timeout == 0.25
    assert store._tls == {"ssl_ca_certs": str(tmp_path / "ca.pem")}


@pytest.mark.parametrize(
    ("store", "url", "expected"),
    [
        (
            {},
            "http://redis.internal:6379",
            "store.url: must be a redis://host:port or rediss://host:port URL "
            "(the value is not shown: it may hold a password)",
        ),
        (
            {},
            f"redis://:{PASSWORD}@redis.internal:notaport",
            "store.url: must be a redis://host:port or rediss://host:port URL "
            "(the value is not shown: it may hold a password)",
        ),
        (
            {},
            "redis://redis.internal:6379/cache",
            "store.url: the path must be a database number, such as /0",
        ),
        (
            {"cluster": True},
            "redis://redis.internal:6379/3",
            "store.url: Redis Cluster has database 0 only",
        ),
        (
            {"ca_file": "ca.pem"},
            "redis://redis.internal:6379",
            "store.ca_file: only applies to a rediss:// URL",
        ),
        (
            {"key_prefix": "gw{x}:"},
            None,
            "store.key_prefix: must be 1 to 64 letters, digits or _ . : -",
        ),
        ({"operation_timeout_seconds": 0}, None, "store.operation_timeout_seconds: must be > 0.0"),
        (
            {"mint_lease_seconds": 6},
            None,
            "store.mint_lease_seconds: must be at least twice unit.token_timeout_seconds (10)",
        ),
        (
            {"key": "c2VjcmV0"},
            None,
            "store.key: must be a reference {env: NAME} or "
            "{file: PATH}; secrets are never written in the configuration itself",
        ),
        ({"ttl": 3}, None, "store.ttl: is not a known field"),
    ],
)
def test_refused_store_settings_name_the_field(
    store: dict[str, Any], url: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert expected in problems(document(**store), monkeypatch, url)


@pytest.mark.parametrize(
    "value",
    ["not base64!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(33)).decode()],
)
def test_store_keys_must_be_32_bytes(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORE_OLD_KEY", value)
    monkeypatch.setenv("STORE_KEY", value)
    found = problems(document(previous_key={"env": "STORE_OLD_KEY"}), monkeypatch)
    rule = "must be 32 random bytes in base64 (openssl rand -base64 32)"
    assert found == [f"store.key: {rule}", f"store.previous_key: {rule}"]
    assert not any(value in problem for problem in found)


def test_store_url_and_key_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = document()
    del doc["store"]["url"], doc["store"]["key"]
    assert problems(doc, monkeypatch) == ["store.url: is required", "store.key: is required"]


def test_check_config_names_an_unset_store_secret(tmp_path: Path) -> None:
    doc = document()
    doc["store"]["url"] = {"env": "UNIT_GATEWAY_TEST_UNSET_STORE_URL"}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert e.value.problems == [
        "store.url: environment variable UNIT_GATEWAY_TEST_UNSET_STORE_URL is not set or empty"
    ]
