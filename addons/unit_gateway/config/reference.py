"""The configuration reference (``docs/configuration.md``), generated from the schema.

:func:`render` walks :class:`~unit_gateway.config.schema.GatewayConfig` and every model under it
(nested sections, lists of sections, secret references, optional sections) and writes one
Markdown section per top-level block: a YAML example and a table of every field with its dotted
path, type, default, allowed values and description. The descriptions are the attribute
docstrings in the models themselves, so documenting a new field happens where it is declared.
``tests/test_config_reference.py`` fails when the committed file and :func:`render` differ, or
when a field has no description.

Regenerate the file from the repository root with either of::

    uv run python -m unit_gateway.config.reference --write
    uv run python -m unit_gateway.config.reference > docs/configuration.md
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from unit_gateway.config import redaction as redaction_section
from unit_gateway.config.core import RESTART_SECTIONS
from unit_gateway.config.schema import GatewayConfig, SecretRef
from unit_gateway.unit_api import route_data

#: Where the generated reference lives, relative to the repository root.
DOC_PATH = "docs/configuration.md"
REGENERATE = "uv run python -m unit_gateway.config.reference --write"
HEADER = (
    f"<!-- Generated from the configuration schema by unit_gateway/config/reference.py; "
    f"do not edit. Regenerate: {REGENERATE} -->"
)

#: A short example per top-level block. tests/test_config_reference.py validates each one
#: against the schema, so an example cannot drift from what the gateway accepts.
EXAMPLES: dict[str, str] = {
    "unit": """\
unit:
  upstreams:
    - url: https://api.s.unit.sh
      environment: sandbox
  org_token: {env: UNIT_ORG_TOKEN}   # or {file: /run/secrets/unit-org-token}
  missing_authorization: reject
""",
    "sandbox": """\
# With the embedded sandbox, unit.upstreams must include http://127.0.0.1:8181
# (and unit.allow_plain_http_loopback: true); no org token is needed.
sandbox:
  embedded: true
  host: 127.0.0.1
  port: 8181
  rate_limit_per_minute: 1000
""",
    "tokens": """\
tokens:
  cache_size: 100000
  customer:
    default_scopes: [customers, accounts, cards, transactions, payments]
    expires_in: 3600
    two_factor: jwt
  cardholder:
    default_scopes: [cards]
    expires_in: 3600
    two_factor: challenge
  jwt:
    private_key: {file: secrets/jwt-signing-key.pem}
    algorithm: RS256
    subject_template: "{customerId}"
""",
    "metrics": """\
metrics:
  enabled: true
  host: 0.0.0.0   # where a cluster Prometheus scrapes the gateway
  port: 9464
""",
    "lifecycle": """\
lifecycle:
  start_wait_seconds: 10   # a request sent while the gateway starts waits this long
  drain_seconds: 25        # under a Kubernetes terminationGracePeriodSeconds of 30
""",
    "routes": """\
routes:
  extra:
    # A route the gateway does not know yet. Its scopes come from the built-in /rewards
    # prefix rule (rewards, rewards-write) unless read/write are given.
    - template: /rewards/{rewardId}/claims
      methods: [GET, POST]
    # A built-in route: only what is given changes.
    - template: /accounts/{id}/limits
      org_only: true
  extra_two_factor_scopes: [rewards-write]
""",
    "redaction": """\
redaction:
  headers: [X-Internal-Auth]
  fields: [internalNote]
  paths: [data.attributes.tags.secret]
  query_params: [session]
  detectors:
    ssn_bare_digits: true
  binary_summary_routes: [/exports/*/csv]
  binary_summary_content_types: [text/csv]
""",
    "access_log": """\
access_log:
  path: logs/unit-access.jsonl   # next to the configuration file
""",
    "store": """\
store:
  url: {env: UNIT_GATEWAY_REDIS_URL}   # e.g. rediss://gateway:PASSWORD@redis.internal:6380/0
  cluster: false                       # true: the URL names a node of a Redis Cluster
  ca_file: /etc/ssl/redis-ca.pem       # rediss:// with a private CA
  key: {file: /run/secrets/unit-gateway-store-key}   # openssl rand -base64 32
  # previous_key: {file: /run/secrets/unit-gateway-store-key.old}   # while rotating
  operation_timeout_seconds: 0.25
  key_prefix: "unitgw:"
  mint_lease_seconds: 15
""",
}


def _builtin_values() -> dict[str, tuple[str, Iterable[str]]]:
    """Built-in lists that a configured list adds to (or, for two-factor scopes, replaces)."""
    return {
        "routes.two_factor_scopes": (
            "built-in two-factor scopes",
            sorted(route_data.default_two_factor_scopes()),
        ),
        "redaction.headers": ("built-in secret headers", redaction_section.DEFAULT_HEADERS),
        "redaction.fields": ("built-in secret fields", redaction_section.DEFAULT_FIELDS),
        "redaction.query_params": (
            "built-in secret query parameters",
            redaction_section.DEFAULT_QUERY_PARAMS,
        ),
        "redaction.binary_summary_routes": (
            "built-in summary-only routes",
            redaction_section.DEFAULT_BINARY_SUMMARY_ROUTES,
        ),
        "redaction.binary_summary_content_types": (
            "built-in summary-only content types",
            redaction_section.DEFAULT_BINARY_SUMMARY_CONTENT_TYPES,
        ),
    }


@dataclass(frozen=True, slots=True)
class Entry:
    """One documented field. ``path`` is dotted; ``[]`` stands for every item of a list."""

    path: str
    type: str
    default: str
    allowed: str
    description: str


# --------------------------------------------------------------------------------------------
# Walking the schema


def entries(model: type[BaseModel] = GatewayConfig, prefix: str = "") -> list[Entry]:
    """Every field under ``model``, depth first, in declaration order."""
    return list(_walk(model, prefix, None))


def _walk(model: type[BaseModel], prefix: str, effective: BaseModel | None) -> Iterator[Entry]:
    """``effective`` is the section's default instance when the whole section is left out;
    its values can differ from the fields' own defaults (``tokens.customer.default_scopes``)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        yield Entry(
            path=path,
            type=_type_name(info.annotation),
            default=_default(info, path, prefix, effective, name),
            allowed=_allowed(info),
            description=_one_line(info.description or ""),
        )
        for child, in_list in _child_models(info.annotation):
            if child is SecretRef and not in_list:
                child_effective = None
            else:
                child_effective = _section_default(info, effective, name)
            yield from _walk(child, f"{path}[]." if in_list else f"{path}.", child_effective)


def _child_models(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The models a field holds, each with whether it is a list item."""
    seen: set[type[BaseModel]] = set()
    for arg, in_list in _leaves(annotation, in_list=False):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
            seen.add(arg)
            yield arg, in_list


def _leaves(annotation: Any, *, in_list: bool) -> Iterator[tuple[Any, bool]]:
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _leaves(get_args(annotation)[0], in_list=in_list)
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _leaves(arg, in_list=in_list)
    elif origin is list:
        yield from _leaves(get_args(annotation)[0], in_list=True)
    else:
        yield annotation, in_list


def _section_default(info: FieldInfo, effective: BaseModel | None, name: str) -> BaseModel | None:
    value = getattr(effective, name) if effective is not None else _default_value(info)
    return value if isinstance(value, BaseModel) else None


# --------------------------------------------------------------------------------------------
# Cells


_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        names = [_type_name(arg) for arg in args if arg is not type(None)]
        if type(None) in args:
            names.append("null")
        return " or ".join(names)
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}s"
    if origin is Literal:
        return _SCALARS.get(type(get_args(annotation)[0]), "value")
    if annotation is SecretRef:
        return "secret reference"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _allowed(info: FieldInfo) -> str:
    base = _strip_optional(info.annotation)
    parts = _constraints(info.metadata, base)
    parts += _annotation_rules(info.annotation)
    return "; ".join(parts)


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _constraints(metadata: Iterable[Any], base: Any) -> list[str]:
    found: dict[str, Any] = {}
    for item in metadata:
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, key, None)
            if value is not None:
                found[key] = value
    parts: list[str] = []
    if "ge" in found and "le" in found:
        parts.append(f"{_number(found['ge'])}..{_number(found['le'])}")
    else:
        for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if key in found:
                parts.append(f"{op} {_number(found[key])}")
    is_list = get_origin(base) is list
    if "min_length" in found:
        n = found["min_length"]
        if is_list:
            parts.append(f"at least {n} item{'s' if n != 1 else ''}")
        elif n == 1:
            parts.append("non-empty")
        else:
            parts.append(f"at least {n} characters")
    if "max_length" in found:
        n = found["max_length"]
        parts.append(f"at most {n} {'items' if is_list else 'characters'}")
    if "pattern" in found:
        parts.append(f"matches `{found['pattern']}`")
    return parts


def _annotation_rules(annotation: Any) -> list[str]:
    """Rules carried by the type itself: Literal choices, secret references, item rules."""
    annotation = _strip_optional(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return ["one of " + ", ".join(f"`{_yaml(v)}`" for v in get_args(annotation))]
    if annotation is SecretRef:
        return ["`{env: NAME}` or `{file: PATH}`"]
    if origin is list:
        item = get_args(annotation)[0]
        rules: list[str] = []
        if get_origin(item) is Annotated:
            metadata: list[Any] = []
            for extra in get_args(item)[1:]:
                metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
            rules += _constraints(metadata, get_args(item)[0])
        rules += _annotation_rules(item)
        return [f"each item: {rule}" for rule in rules]
    return []


def _default_value(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True, validated_data={})


def _default(
    info: FieldInfo, path: str, prefix: str, effective: BaseModel | None, name: str
) -> str:
    if info.is_required():
        return "**required**"
    value = _default_value(info)
    if isinstance(value, BaseModel):
        return "see below"
    shown = f"`{_yaml(value)}`"
    if effective is not None:
        section_value = getattr(effective, name)
        if section_value != value:
            section = prefix.rstrip(".")
            shown += f"; `{_yaml(section_value)}` when `{section}` is left out"
    return shown


def _yaml(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cell(text: str) -> str:
    """``text`` as one Markdown table cell."""
    return _one_line(text).replace("|", "\\|")


# --------------------------------------------------------------------------------------------
# The document


_INTRO = """\
# Configuration reference

The gateway reads one YAML file: `unit-gateway run --config FILE`, or the mitmproxy option
`unit_gateway_config`. `unit-gateway check-config FILE` validates a file and prints one
`field.path: rule` line per problem; the gateway refuses to start on the same problems.

- **Unknown keys are errors**, so a typo never silently does nothing.
- **Secrets are never written in the file.** A secret field holds a reference resolved at
  start: `{env: NAME}` (an environment variable) or `{file: PATH}` (a file; a relative path is
  relative to the configuration file).
- **Reloading:** the file is watched. A valid change applies without a restart; an invalid
  one is reported and the running configuration stays. Changes to these sections take
  effect only at the next start: {restart}.
- **Paths** below are dotted YAML keys; `[]` stands for every item of a list, so
  `unit.upstreams[].url` is the `url` of each entry under `unit.upstreams`. A section left out
  gets all its defaults; a field left out gets its own default.

Examples of whole files: `config/local.yaml` (embedded sandbox), `config/sandbox.yaml`
(Unit's sandbox), `config/staging.yaml` (transparent egress proxy).
"""


def render() -> str:
    """The whole reference as Markdown. Deterministic: same schema, same text."""
    restart = ", ".join(f"`{section}`" for section in RESTART_SECTIONS)
    out: list[str] = [HEADER, "", _INTRO.replace("{restart}", restart)]
    blocks = GatewayConfig.model_fields
    out.append("Sections: " + ", ".join(f"[`{name}`](#{name})" for name in blocks) + ".")
    builtins = _builtin_values()
    for name, info in blocks.items():
        out += ["", f"## `{name}`", "", _one_line(info.description or "")]
        status = [
            "Required." if info.is_required() else "Optional: left out, it has the defaults below."
        ]
        if name in RESTART_SECTIONS:
            status.append("Changes take effect after a restart.")
        else:
            status.append("Changes apply while running.")
        out += ["", " ".join(status)]
        if name in EXAMPLES:
            out += ["", "```yaml", EXAMPLES[name].rstrip("\n"), "```"]
        out += [
            "",
            "| path | type | default | allowed | description |",
            "|---|---|---|---|---|",
        ]
        for entry in entries(_section_model(info), f"{name}."):
            out.append(
                f"| `{entry.path}` | {cell(entry.type)} | {cell(entry.default)} "
                f"| {cell(entry.allowed)} | {cell(entry.description)} |"
            )
        lists = [(path, v) for path, v in builtins.items() if path.startswith(f"{name}.")]
        if lists:
            out += ["", "Built-in values (see the fields above for how configured ones combine):"]
            out.append("")
            for path, (label, values) in lists:
                shown = ", ".join(f"`{value}`" for value in values)
                out.append(f"- `{path}`, {label}: {shown}")
    return "\n".join(out) + "\n"


def _section_model(info: FieldInfo) -> type[BaseModel]:
    models = [model for model, _ in _child_models(info.annotation)]
    assert len(models) == 1, f"a top-level block is one section model, not {models}"
    return models[0]


def repo_doc_path() -> Path:
    """docs/configuration.md of the checkout this module is in (addons/unit_gateway/..)."""
    return Path(__file__).resolve().parents[2] / DOC_PATH


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--write"]):
        print(
            "usage: python -m unit_gateway.config.reference [--write]\n"
            f"  prints the configuration reference; --write replaces {DOC_PATH}",
            file=sys.stderr,
        )
        return 2
    text = render()
    if args == ["--write"]:
        path = repo_doc_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
