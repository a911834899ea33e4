"""The configuration reference: docs/configuration.md is generated from the schema, documents
every field, and stays in sync with it."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

from unit_gateway.config import reference as config_reference
from unit_gateway.config.schema import GatewayConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / config_reference.DOC_PATH
HOW = f"regenerate it with `{config_reference.REGENERATE}` and commit it"


# An independent walk of the schema (not config_reference's own), so a field the generator
# skipped is still noticed.
def _models(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _models(get_args(annotation)[0])
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _models(arg)
    elif origin is list:
        for model, _ in _models(get_args(annotation)[0]):
            yield model, True
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False


def schema_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, info in model.model_fields.items():
        path = prefix + name
        yield path, info
        for child, in_list in _models(info.annotation):
            yield from schema_fields(child, f"{path}[]." if in_list else f"{path}.")


def undocumented(model: type[BaseModel]) -> list[str]:
    return [path for path, info in schema_fields(model) if not (info.description or "").strip()]


def doc_rows(text: str) -> dict[str, list[str]]:
    """Table rows of the reference by path: [type, default, allowed, description]."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", match.group(2))]
            assert match.group(1) not in rows, f"{match.group(1)} is documented twice"
            rows[match.group(1)] = cells
    return rows


@pytest.fixture(scope="module")
def rendered() -> str:
    return config_reference.render()


def test_committed_reference_is_up_to_date(rendered: str) -> None:
    assert DOC.exists(), f"{config_reference.DOC_PATH} is missing: {HOW}"
    assert DOC.read_text(encoding="utf-8") == rendered, (
        f"{config_reference.DOC_PATH} differs from the configuration schema: {HOW}"
    )


def test_render_is_deterministic(rendered: str) -> None:
    assert config_reference.render() == rendered
    assert rendered.splitlines()[0] == config_reference.HEADER
    assert config_reference.REGENERATE in config_reference.HEADER


def test_every_field_has_a_description() -> None:
    missing = undocumented(GatewayConfig)
    assert not missing, (
        "configuration fields without a description (add an attribute docstring under the "
        f"field, then {HOW}): {', '.join(missing)}"
    )


def test_the_check_catches_an_undocumented_field() -> None:
    class Inner(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)
        documented: int = 1
        """Documented."""
        bare: int = 2

    class Outer(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)
        items: list[Inner] = []
        """Documented."""

    assert undocumented(Outer) == ["items[].bare"]


def test_every_field_is_in_the_reference_with_its_description(rendered: str) -> None:
    rows = doc_rows(rendered)
    top_level = set(GatewayConfig.model_fields)
    paths = []
    for path, info in schema_fields(GatewayConfig):
        paths.append(path)
        description = config_reference.cell(info.description or "")
        if path in top_level:
            heading = f"## `{path}`\n\n{description}\n"
            assert heading in rendered, f"no section for {path}: {HOW}"
            continue
        assert path in rows, f"{path} is not in {config_reference.DOC_PATH}: {HOW}"
        assert rows[path][3] == description, f"{path}: the description is stale: {HOW}"
    stray = set(rows) - set(paths)
    assert not stray, f"the reference documents fields the schema lacks: {sorted(stray)}"


@pytest.mark.parametrize(
    ("path", "type_", "default", "allowed"),
    [
        ("tokens.customer.expires_in", "integer", "`3600`", "1..86400"),
        ("tokens.cardholder.expires_in", "integer", "`3600`", "1..86400"),
        (
            "tokens.customer.default_scopes",
            "list of strings",
            "`[]`; `[customers, accounts]` when `tokens.customer` is left out",
            "each item: matches `^[a-z][a-z-]*[a-z]$`",
        ),
        (
            "tokens.cardholder.default_scopes",
            "list of strings",
            "`[]`; `[cards]` when `tokens.cardholder` is left out",
            "each item: matches `^[a-z][a-z-]*[a-z]$`",
        ),
        (
            "tokens.customer.two_factor",
            "string",
            "`challenge`",
            "one of `sandbox-otp`, `jwt`, `challenge`",
        ),
        ("tokens.expiry_margin_seconds", "integer", "`30`", "0..3600"),
        ("tokens.jwt", "mapping or null", "`null`", ""),
        (
            "tokens.jwt.private_key",
            "secret reference",
            "**required**",
            "`{env: NAME}` or `{file: PATH}`",
        ),
        ("tokens.jwt.subject_template", "string", "`'{customerId}'`", ""),
        ("tokens.jwt.lifetime_seconds", "integer", "`60`", "10..3600"),
        ("unit.upstreams", "list of mappings", "**required**", "at least 1 item"),
        ("unit.upstreams[].url", "string", "**required**", ""),
        ("unit.upstreams[].environment", "string", "`sandbox`", "one of `sandbox`, `live`"),
        (
            "unit.org_token",
            "secret reference or null",
            "`null`",
            "`{env: NAME}` or `{file: PATH}`",
        ),
        ("unit.org_token.env", "string or null", "`null`", ""),
        ("unit.missing_authorization", "string", "`reject`", "one of `reject`, `org`"),
        ("unit.token_timeout_seconds", "number", "`5.0`", "> 0; <= 60"),
        ("unit.rate_limit_per_minute", "integer", "`1000`", ">= 1"),
        ("sandbox.port", "integer", "`8181`", "0..65535"),
        ("metrics.host", "string", "`127.0.0.1`", ""),
        ("metrics.port", "integer", "`9464`", "0..65535"),
        ("routes.extra[].template", "string", "**required**", ""),
        ("routes.two_factor_scopes", "list of strings or null", "`null`", ""),
        ("redaction.detectors.ssn_bare_digits", "boolean", "`false`", ""),
        ("redaction.max_body_bytes", "integer", "`8388608`", ">= 1024"),
        ("access_log.path", "string or null", "`null`", "non-empty"),
    ],
)
def test_known_fields_show_their_type_default_and_limits(
    rendered: str, path: str, type_: str, default: str, allowed: str
) -> None:
    row = doc_rows(rendered)[path]
    assert row[:3] == [type_, default, allowed]


def test_restart_sections_and_builtin_lists_are_stated(rendered: str) -> None:
    metrics = rendered.split("## `metrics`")[1].split("## `")[0]
    assert "Changes take effect after a restart." in metrics
    tokens = rendered.split("## `tokens`")[1].split("## `")[0]
    assert "Changes apply while running." in tokens
    assert "- `redaction.headers`, built-in secret headers: `Authorization`," in rendered
    assert "built-in two-factor scopes: " in rendered and "`cards-write`" in rendered


@pytest.mark.parametrize("block", list(GatewayConfig.model_fields))
def test_each_block_has_an_example_the_schema_accepts(block: str) -> None:
    assert block in config_reference.EXAMPLES, f"add an example for {block} to EXAMPLES"
    example = yaml.safe_load(config_reference.EXAMPLES[block])
    assert list(example) == [block]
    document: dict[str, Any] = {
        "unit": {
            "upstreams": [{"url": "https://api.s.unit.sh"}],
            "org_token": {"env": "UNIT_ORG_TOKEN"},
        }
    }
    if block == "sandbox":
        document["unit"] = {
            "upstreams": [{"url": "http://127.0.0.1:8181"}],
            "allow_plain_http_loopback": True,
        }
    document.update(example)
    GatewayConfig.model_validate(document)


def test_module_prints_the_reference(rendered: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "unit_gateway.config.reference"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout == rendered


def test_write_replaces_the_file(
    rendered: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "docs" / "configuration.md"
    monkeypatch.setattr(config_reference, "repo_doc_path", lambda: target)
    assert config_reference.main(["--write"]) == 0
    assert target.read_text(encoding="utf-8") == rendered
    assert config_reference.main(["--bogus"]) == 2
