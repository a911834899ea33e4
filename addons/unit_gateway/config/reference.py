"""The configuration reference (``docs/configuration.md``), generated from the schema.

:func:`render` writes one Markdown section per top-level block of
:class:`~unit_gateway.config.schema.GatewayConfig`: a YAML example and a table of every field
(``reference_fields``). ``tests/test_config_reference.py`` fails when the committed file and
:func:`render` differ, or when a field has no description.

Regenerate the file from the repository root with either of::

    uv run python -m unit_gateway.config.reference --write
    uv run python -m unit_gateway.config.reference > docs/configuration.md
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from unit_gateway.config import redaction as redaction_section
from unit_gateway.config.core import RESTART_SECTIONS
from unit_gateway.config.reference_fields import _one_line, _section_model, cell, entries
from unit_gateway.config.schema import GatewayConfig
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


def repo_doc_path() -> Path:
    """docs/configuration.md of the checkout this module is in (at addons/unit_gateway/config/)."""
    return Path(__file__).resolve().parents[3] / DOC_PATH


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
