"""Hot reload: a valid change to the YAML applies without a restart; a broken one is reported
with its field and the running configuration keeps working."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from conftest import GatewayFactory, config_reloads, proxied_session, wait_until
from unit_gateway.testing import harness


def rewrite(path: Path, change: Callable[[dict], None]) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    # A new size or mtime is what the watcher looks for; make sure the clock moved on.
    time.sleep(0.01)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_scope_default_changes_live(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path
) -> None:
    gateway = gateway_factory(
        sandbox, overrides={"tokens": {"customer": {"default_scopes": ["cards"]}}}
    )
    config = run_dir / "gateway.yaml"
    placeholder = {"Authorization": "Bearer unitgw:customer:10001"}
    with proxied_session(gateway) as session:
        assert session.get(sandbox.url + "/cards", headers=placeholder).status_code == 200
        assert session.get(sandbox.url + "/accounts", headers=placeholder).status_code == 200
        assert sandbox.stats()["tokens_created"]["customer"] == 2, "cards, then accounts"

        rewrite(
            config,
            lambda d: d["tokens"]["customer"].update(default_scopes=["cards", "accounts"]),
        )
        assert wait_until(lambda: config_reloads(gateway, "ok") == 1)
        assert "unit-gateway: configuration" in gateway.process.output()
        # Another customer: the new defaults mint one token that serves both routes.
        other = {"Authorization": "Bearer unitgw:customer:10003"}
        assert session.get(sandbox.url + "/cards", headers=other).status_code == 200
        assert session.get(sandbox.url + "/accounts", headers=other).status_code == 200
    assert sandbox.stats()["tokens_created"]["customer"] == 3


def test_broken_file_keeps_the_running_configuration(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path
) -> None:
    gateway = gateway_factory(sandbox)
    config = run_dir / "gateway.yaml"
    headers = {"Authorization": "Bearer unitgw:customer:10001"}
    with proxied_session(gateway) as session:
        assert session.get(sandbox.url + "/cards", headers=headers).status_code == 200
        rewrite(config, lambda d: d.setdefault("tokens", {}).update(cache_size=0))
        assert wait_until(lambda: config_reloads(gateway, "error") == 1)
        output = gateway.process.output()
        assert "tokens.cache_size: must be >= 1" in output
        assert "the running configuration stays in force" in output
        assert session.get(sandbox.url + "/cards", headers=headers).status_code == 200
        assert session.get(sandbox.url + "/accounts", headers=headers).status_code == 200
        # Fixing the file applies it.
        rewrite(config, lambda d: d["tokens"].update(cache_size=100))
        assert wait_until(lambda: config_reloads(gateway, "ok") == 1)
    assert gateway.process.proc is not None and gateway.process.proc.poll() is None


def test_redaction_rule_changes_live(
    gateway_factory: GatewayFactory, sandbox: harness.Sandbox, run_dir: Path
) -> None:
    gateway = gateway_factory(sandbox, extra_args=("--set", "flow_detail=3"))
    config = run_dir / "gateway.yaml"
    headers = {"Authorization": "Bearer unitgw:customer:10001"}
    shown = re.compile(r'"last4Digits": "(\d{4})"')
    with proxied_session(gateway) as session:
        first = session.get(sandbox.url + "/cards/30001", headers=headers)
        last4 = first.json()["data"]["attributes"]["last4Digits"]
        gateway.process.wait_for(r"/cards/30001")
        assert wait_until(lambda: shown.search(gateway.process.output()) is not None)
        assert shown.search(gateway.process.output()).group(1) == last4  # type: ignore[union-attr]

        rewrite(config, lambda d: d.setdefault("redaction", {}).update(fields=["last4Digits"]))
        assert wait_until(lambda: config_reloads(gateway, "ok") == 1)
        before = gateway.process.output()
        again = session.get(sandbox.url + "/cards/30001", headers=headers)
        # The caller still gets the real value; what a person sees no longer shows it.
        assert again.json()["data"]["attributes"]["last4Digits"] == last4
        marker = '"last4Digits": "[redacted:last4Digits]"'
        assert wait_until(lambda: marker in gateway.process.output()[len(before) :])
        assert not shown.search(gateway.process.output()[len(before) :])
