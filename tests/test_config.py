"""Configuration validation: every refusal names the field and the rule, in check-config and
at gateway start-up alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from unit_gateway.config import schema as config
from unit_gateway.config.schema import ConfigError, Secret
from unit_gateway.testing import harness

UPSTREAM = {"url": "https://api.s.unit.sh", "environment": "sandbox"}


def base(**sections: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"unit": {"upstreams": [UPSTREAM], "org_token": {"env": "ORG"}}}
    harness._merge(document, sections)
    return document


# Each broken configuration with the exact problem line it must produce.
BROKEN: dict[str, tuple[dict[str, Any], str]] = {
    "token lifetime over Unit's maximum": (
        base(tokens={"customer": {"expires_in": 90000}}),
        "tokens.customer.expires_in: must be <= 86400",
    ),
    "secret written inline": (
        base(unit={"org_token": "v2.public.inline-secret"}),
        "unit.org_token: must be a reference {env: NAME} or {file: PATH}; "
        "secrets are never written in the configuration itself",
    ),
    "plain http to a remote host": (
        base(unit={"upstreams": [{"url": "http://api.s.unit.sh"}]}),
        "unit.upstreams.0.url: plain http is only allowed for a loopback upstream",
    ),
    "user and password in the upstream URL": (
        base(unit={"upstreams": [{"url": "https://svc:hunter2@api.s.unit.sh"}]}),
        "unit.upstreams.0.url: must not carry a user or password: Unit takes the org token",
    ),
    "plain http to loopback without opting in": (
        base(unit={"upstreams": [{"url": "http://127.0.0.1:8181"}]}),
        "unit.upstreams.0.url: plain http needs unit.allow_plain_http_loopback: true",
    ),
    "sandbox passcode against the live API": (
        base(
            unit={"upstreams": [{"url": "https://api.unit.co", "environment": "live"}]},
            tokens={"customer": {"two_factor": "sandbox-otp"}},
        ),
        "tokens.customer.two_factor: sandbox-otp is refused for a live upstream "
        "(https://api.unit.co)",
    ),
    "live host marked as sandbox": (
        base(unit={"upstreams": [{"url": "https://api.unit.co"}]}),
        "unit.upstreams.0.environment: api.unit.co is Unit's live API",
    ),
    "unknown field": (
        base(unit={"retries": 3}),
        "unit.retries: is not a known field",
    ),
    "unknown two-factor strategy": (
        base(tokens={"customer": {"two_factor": "sms"}}),
        "tokens.customer.two_factor: must be one of 'sandbox-otp', 'jwt' or 'challenge'",
    ),
    "cardholder scope outside the card scopes": (
        base(tokens={"cardholder": {"default_scopes": ["cards", "payments"]}}),
        "tokens.cardholder.default_scopes: cardholder tokens allow only "
        "cards cards-sensitive cards-sensitive-write cards-write",
    ),
    "jwt strategy without a key": (
        base(tokens={"customer": {"two_factor": "jwt"}}),
        "tokens.customer.two_factor: jwt needs a tokens.jwt section",
    ),
    "org token env var not set": (
        base(unit={"org_token": {"env": "UNIT_GATEWAY_TEST_UNSET_VAR"}}),  # replaces ORG
        "unit.org_token: environment variable UNIT_GATEWAY_TEST_UNSET_VAR is not set or empty",
    ),
    "no upstream": (
        base(unit={"upstreams": []}),
        "unit.upstreams: must have at least 1 item(s)",
    ),
    "metrics port out of range": (
        base(metrics={"port": 70000}),
        "metrics.port: must be <= 65535",
    ),
    "missing unit section": (
        {"tokens": {}},
        "unit: is required",
    ),
}


@pytest.fixture(autouse=True)
def org_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORG", "v2.public.test-org-token")
    monkeypatch.delenv("UNIT_GATEWAY_TEST_UNSET_VAR", raising=False)


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_configuration_names_field_and_rule(case: str) -> None:
    document, expected = BROKEN[case]
    with pytest.raises(ConfigError) as e:
        config.validate(document, base_dir=Path("."))
    assert expected in e.value.problems


def test_valid_configuration_resolves_secret_from_env() -> None:
    loaded = config.validate(base(), base_dir=Path("."))
    assert loaded.org_token is not None
    assert loaded.org_token.reveal() == "v2.public.test-org-token"
    # The value never shows in a repr, so it cannot reach a log by accident.
    assert "test-org-token" not in repr(loaded.org_token)
    assert "test-org-token" not in repr(loaded.secrets)


def test_secret_file_is_relative_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "org-token").write_text("v2.public.from-file\n")
    document = base()
    document["unit"]["org_token"] = {"file": "org-token"}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(document))
    loaded = config.load(path)
    assert loaded.org_token == Secret("v2.public.from-file", "x")


def test_missing_secret_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    document = base()
    document["unit"]["org_token"] = {"file": "nope"}
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert e.value.problems == [
        f"unit.org_token: cannot read secret file {tmp_path / 'nope'}: No such file or directory"
    ]


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("unit:\n  upstreams: [\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert "not valid YAML at line" in e.value.problems[0]


def test_embedded_sandbox_must_be_an_upstream() -> None:
    document = base(sandbox={"embedded": True, "port": 9999})
    with pytest.raises(ConfigError) as e:
        config.validate(document, base_dir=Path("."))
    assert (
        "sandbox.port: the embedded sandbox (127.0.0.1:9999) must be one of unit.upstreams"
        in e.value.problems
    )


@pytest.mark.parametrize("name", ["local.yaml", "sandbox.yaml"])
def test_shipped_configurations_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_ORG_TOKEN", "v2.public.test-org-token")
    loaded = config.load(Path(__file__).parent.parent / "config" / name)
    assert loaded.model.unit.upstreams


def test_shipped_staging_configuration_only_lacks_its_secret_file() -> None:
    with pytest.raises(ConfigError) as e:
        config.load(Path(__file__).parent.parent / "config" / "staging.yaml")
    assert e.value.problems == [
        "unit.org_token: cannot read secret file /run/secrets/unit-org-token: "
        "No such file or directory"
    ]


def _write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_config_command_reports_each_problem(tmp_path: Path, case: str) -> None:
    document, expected = BROKEN[case]
    path = _write(tmp_path, document)
    result = subprocess.run(
        harness.python_command("check-config", str(path)),
        capture_output=True,
        text=True,
        env={"ORG": "v2.public.test-org-token", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"invalid unit-gateway configuration {path}:")
    assert f"  {expected}\n" in result.stderr
    assert "v2.public.test-org-token" not in result.stdout + result.stderr


def test_check_config_command_accepts_valid_file(tmp_path: Path) -> None:
    path = _write(tmp_path, base())
    result = subprocess.run(
        harness.python_command("check-config", str(path)),
        capture_output=True,
        text=True,
        env={"ORG": "v2.public.test-org-token", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok" in result.stdout


# Starting mitmdump is slow-ish: the refusal at start-up is shown for a spread of kinds.
STARTUP_CASES = [
    "token lifetime over Unit's maximum",
    "secret written inline",
    "sandbox passcode against the live API",
    "unknown field",
    "org token env var not set",
    "cardholder scope outside the card scopes",
]


@pytest.mark.parametrize("case", STARTUP_CASES)
@pytest.mark.parametrize("launcher", ["mitmdump -s", "unit-gateway run"])
def test_gateway_refuses_to_start_with_the_same_message(
    tmp_path: Path, case: str, launcher: str
) -> None:
    document, expected = BROKEN[case]
    path = _write(tmp_path, document)
    confdir = tmp_path / "confdir"
    if launcher == "mitmdump -s":
        argv = [
            str(Path(sys.executable).parent / "mitmdump"),
            "-s",
            str(Path(__file__).parent.parent / "addons" / "gateway.py"),
            "--set",
            f"unit_gateway_config={path}",
        ]
    else:
        argv = harness.python_command("run", "--config", str(path), "--")
    argv += ["--listen-host", "127.0.0.1", "--listen-port", "0", "--set", f"confdir={confdir}"]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={"ORG": "v2.public.test-org-token", "PATH": "/usr/bin:/bin"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"invalid unit-gateway configuration {path}:" in output
    assert f"  {expected}" in output
    assert "v2.public.test-org-token" not in output
    # Refused before serving anything: no proxy addresses were announced.
    assert "unit-gateway: proxy listening" not in output


def test_the_upstream_is_where_a_request_goes_not_what_its_host_header_says() -> None:
    from mitmproxy.http import Request

    model = config.GatewayConfig.model_validate(base())

    def request(url: str, host_header: str | None = None) -> Request:
        made = Request.make("GET", url)
        if host_header is not None:
            made.headers["Host"] = host_header
        return made

    to_unit = request("https://api.s.unit.sh/cards")
    assert model.upstream_of(to_unit) is model.unit.upstreams[0]
    # Another address naming Unit in its Host header gets no token...
    elsewhere = request("https://203.0.113.7/cards", host_header="api.s.unit.sh")
    assert model.upstream_of(elsewhere) is None
    # ...unless a transparent mode re-targets it to the upstream the header names.
    assert model.upstream_named_by(elsewhere) is model.unit.upstreams[0]
    # Never across schemes or ports.
    assert model.upstream_of(request("http://api.s.unit.sh:443/cards")) is None
    assert model.upstream_named_by(request("http://203.0.113.7:443/", "api.s.unit.sh")) is None
    assert model.upstream_of(request("https://api.s.unit.sh:8443/cards")) is None
