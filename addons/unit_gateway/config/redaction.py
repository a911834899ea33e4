"""The ``redaction:`` section of the configuration: the built-in defaults it adds to, its models,
and the syntax of its JSONPath-like rules (:class:`PathRule`, checked when the file is loaded).

:mod:`unit_gateway.redaction.rules` holds the detectors and the compiled patterns, and
:mod:`unit_gateway.redaction.engine` applies both. Everything configured is *added* to the
defaults: a configuration can redact more, never less.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# --- defaults ------------------------------------------------------------------------------

#: Header values that are credentials. Matched case-insensitively.
DEFAULT_HEADERS: tuple[str, ...] = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")

#: JSON keys (and form fields, query parameters, ``key: value`` text) whose value is secret at
#: any depth: unit-api.md, "Sensitive data that must never reach a log". Matched
#: case-insensitively; the value under the key is replaced whole, whatever its JSON type.
#: ``counterparty.accountNumber`` needs no rule of its own: ``accountNumber`` covers every depth.
DEFAULT_FIELDS: tuple[str, ...] = (
    # credentials
    "token",  # customer, cardholder and API tokens; also the webhook signing secret
    "verificationToken",
    "verificationCode",
    "jwtToken",
    "plaidProcessorToken",
    "authToken",
    "signedNonce",  # mobile wallet
    "payload",  # mobile wallet
    # card data
    "pan",
    "cvv2",
    "pin",
    "expirationDate",
    # PII / KYC
    "ssn",
    "passport",
    "matriculaConsular",
    "nationality",
    "dateOfBirth",
    "ein",
    "fullName",
    "address",
    "shippingAddress",
    "operatingAddress",
    "phone",
    "email",
    "ip",
    "deviceFingerprints",
    "jwtSubject",
    # bank data
    "accountNumber",
    "routingNumber",
    "secondaryAccountNumber",
    "counterpartyRoutingNumber",
    "senderAccountNumber",
)

#: Fields whose string value is a token: shown as a keyed fingerprint instead of a bare marker,
#: so a token Unit returns can be matched with the Authorization header that later carries it.
FINGERPRINTED_FIELDS: frozenset[str] = frozenset(
    name.lower()
    for name in (
        "token",
        "verificationToken",
        "jwtToken",
        "authToken",
        "plaidProcessorToken",
        "access_token",
        "id_token",
        "refresh_token",
    )
)

#: Query-string (and form) parameters that carry credentials in common web conventions. They
#: are checked in addition to DEFAULT_FIELDS, which apply to query strings and forms too.
DEFAULT_QUERY_PARAMS: tuple[str, ...] = (
    "access_token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "client_secret",
    "password",
    "secret",
    "signature",
)

#: Routes whose (non-JSON) bodies are documents full of PII: shown only as a size/type summary.
#: ``*`` and ``{name}`` match one path segment, ``**`` any number of segments.
DEFAULT_BINARY_SUMMARY_ROUTES: tuple[str, ...] = (
    "/applications/*/documents/*/**",  # the document itself, /back, /download, /multipart
    "/application/*/documents/*/**",
    "/check-deposits/*/front",
    "/check-deposits/*/back",
    "/check-payments/*/front",
    "/check-payments/*/back",
    "/statements/**/pdf",
    "/statements/*/html",
    "/tax-forms/*/pdf",
    "/cash-deposits/barcodes/*/image",
    "/positive-pay/*/documents",
)

#: Content types that are shown only as a summary, wherever they come from. ``text/html`` is
#: here because the only HTML Unit serves is account statements (names, addresses, account
#: numbers in prose no detector can find); an HTML error page from a load balancer is the price.
DEFAULT_BINARY_SUMMARY_CONTENT_TYPES: tuple[str, ...] = (
    "application/pdf",
    "application/x-pdf",
    "application/octet-stream",
    "application/zip",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.*",
    "application/vnd.ms-*",
    "image/*",
    "audio/*",
    "video/*",
    "font/*",
    "text/html",
)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


# --- configuration -------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not name.strip() or name != name.strip():
        raise ValueError("must be a non-empty name without surrounding spaces")
    return name


def _check_header(name: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        raise ValueError("is not a valid HTTP header name")
    return name


def _check_path(rule: str) -> str:
    PathRule.parse(rule)  # raises ValueError naming the problem
    return rule


def _check_route(pattern: str) -> str:
    if not pattern.startswith("/"):
        raise ValueError("must be a path pattern starting with / such as /statements/*/pdf")
    return pattern


def _check_content_type(pattern: str) -> str:
    if not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/(\*|[a-z0-9!#$&^_.+-]+\*?)", pattern.lower()):
        raise ValueError("must be a media type such as application/pdf, image/* or application/x-*")
    return pattern


FieldName = Annotated[str, AfterValidator(_check_name)]
HeaderName = Annotated[str, AfterValidator(_check_header)]
PathText = Annotated[str, AfterValidator(_check_path)]
RoutePattern = Annotated[str, AfterValidator(_check_route)]
ContentTypePattern = Annotated[str, AfterValidator(_check_content_type)]


class _Model(BaseModel):
    # Attribute docstrings become field descriptions: docs/configuration.md is built from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DetectorSettings(_Model):
    """Pattern detectors run over every string, whatever its name."""

    card_numbers: bool = True
    """Card numbers: 13-19 digits, optionally grouped by single spaces or dashes, passing the
    Luhn check."""
    ssn: bool = True
    """Social security numbers written `123-45-6789`."""
    ssn_bare_digits: bool = False
    """Also any standalone 9-digit number as an SSN. Off by default: ids, amounts in cents and
    phone numbers are bare 9-digit runs too. A value under an `ssn` key is redacted by name
    whatever its shape, so this only matters for SSNs in free text."""
    unit_tokens: bool = True
    """PASETO tokens as Unit issues them (`v2.public.…`), shown as fingerprints."""
    jwts: bool = True
    """JWTs, `eyJ….….…` (JWS; JWE's five parts too)."""


class RedactionSettings(_Model):
    """The ``redaction:`` section of the gateway configuration. Every list adds to the defaults."""

    headers: list[HeaderName] = Field(default_factory=list)
    """More header names whose values are secret (case-insensitive), added to the built-in
    ones (see below)."""
    fields: list[FieldName] = Field(default_factory=list)
    """More names whose values are secret at any depth: JSON keys, form fields, query
    parameters and `key: value` text (case-insensitive; the whole value is replaced). Added
    to the built-in ones (see below)."""
    paths: list[PathText] = Field(default_factory=list)
    """JSONPath-like rules for values secret only at one place: `data.attributes.tags.secret`,
    `data[*].attributes.note`, `$.meta.x`, or `..tags.secret` at any depth. Keys match
    case-insensitively; `*` matches any key or array item; a named segment looks through an
    array, so `data.attributes.x` also covers every item of a list response."""
    query_params: list[FieldName] = Field(default_factory=list)
    """More query-string (and form) parameter names whose values are secret, added to the
    built-in ones (see below; every name in `fields` applies to query strings too)."""
    detectors: DetectorSettings = DetectorSettings()
    """Pattern detectors that find secrets by their shape in any string, whatever its
    name."""
    binary_summary_routes: list[RoutePattern] = Field(default_factory=list)
    """More path patterns whose bodies are documents shown only as content type and size,
    added to the built-in ones (see below). `*` and `{name}` match one path segment, `**` any
    number of segments."""
    binary_summary_content_types: list[ContentTypePattern] = Field(default_factory=list)
    """More media types whose bodies are shown only as content type and size, e.g.
    `application/pdf`, `image/*`, `application/x-*`; added to the built-in ones (see
    below)."""
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    """Bodies larger than this many bytes once decompressed are summarized, not scanned
    (also a guard against decompression bombs). Default 8 MiB: a body is redacted on the
    event loop, and every request waits while it is (0.25-0.8 s for 8 MiB of JSON)."""


# --- JSONPath-like rules -------------------------------------------------------------------


@dataclass(frozen=True)
class PathSegment:
    kind: Literal["key", "wildcard", "index", "any_index"]
    key: str = ""  # lower-cased, for kind == "key"
    name: str = ""  # as written, for markers
    index: int = 0  # for kind == "index"


_PATH_NAME = re.compile(r"[^.\[\]\s]+")
_PATH_BRACKET = re.compile(r"""\[(?:(?P<index>\d+|\*)|(?P<q>["'])(?P<quoted>.*?)(?P=q))\]""")


@dataclass(frozen=True)
class PathRule:
    """A parsed JSONPath-like rule. ``floating`` rules match at any depth (``..x.y``)."""

    text: str
    segments: tuple[PathSegment, ...]
    floating: bool

    @property
    def label(self) -> str:
        """What the marker calls a value this rule redacted: its last key, else ``path``."""
        last = self.segments[-1]
        if last.kind == "key" and re.fullmatch(r"[\w$@-]{1,64}", last.name):
            return last.name
        return "path"

    @classmethod
    def parse(cls, text: str) -> PathRule:
        rest = text.strip()
        floating = False
        if rest.startswith("$"):
            rest = rest[1:]
        if rest.startswith(".."):
            floating, rest = True, rest[2:]
        elif rest.startswith("."):
            rest = rest[1:]
        segments: list[PathSegment] = []
        pos = 0
        while pos < len(rest):
            if rest[pos] == "[":
                bracket = _PATH_BRACKET.match(rest, pos)
                if bracket is None:
                    raise ValueError(f"cannot parse {text!r} at character {pos + 1}")
                index, quoted = bracket.group("index"), bracket.group("quoted")
                if index == "*":
                    segments.append(PathSegment("any_index"))
                elif index is not None:
                    segments.append(PathSegment("index", index=int(index)))
                else:
                    segments.append(PathSegment("key", key=quoted.lower(), name=quoted))
                pos = bracket.end()
                continue
            if segments:
                if rest[pos] != ".":
                    raise ValueError(f"cannot parse {text!r} at character {pos + 1}")
                pos += 1
            name = _PATH_NAME.match(rest, pos)
            if name is None:
                raise ValueError(f"cannot parse {text!r} at character {pos + 1}")
            if name.group() == "*":
                segments.append(PathSegment("wildcard"))
            else:
                segments.append(PathSegment("key", key=name.group().lower(), name=name.group()))
            pos = name.end()
        if not segments:
            raise ValueError(f"{text!r} names no key")
        return cls(text, tuple(segments), floating)
