"""Unit's token client: the gateway's own calls, straight to the upstream with the org token
(never through the proxy), with Unit's documented timeout."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import time
from typing import Any

import aiohttp
from mitmproxy import http

from unit_gateway.config.schema import Secret, Upstream
from unit_gateway.net import jsonapi
from unit_gateway.net.limits import retry_after_seconds, whole_seconds
from unit_gateway.net.loops import own_socket
from unit_gateway.tokens.cache import usable_lifetime
from unit_gateway.tokens.errors import TokenError
from unit_gateway.unit_api.identity import Identity

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
#: How long after the redirect-loop guard closed a token call's connection a failure to
#: connect is put down to the loop.
LOOP_NAMED_SECONDS = 10.0
_HOP_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)

_TOKEN_PATHS = {
    "customer": ("/customers/{}/token", "customerToken", "customerTokenVerification"),
    "cardholder": ("/cards/{}/cardholder/token", "cardholderToken", "cardholderTokenVerification"),
}


class UnitClient:
    """The gateway's own connection to one Unit upstream: token and verification calls
    with the org token, and the one retry of a request whose injected token Unit refused."""

    def __init__(
        self,
        upstream: Upstream,
        org_token: Secret,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.upstream = upstream
        self.org_token = org_token
        #: Of the token and verification calls (``unit.token_timeout_seconds``).
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        #: time.monotonic() when the redirect-loop guard last closed one of its connections
        self.looped_at: float | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(
                    ssl=self.ssl_context or True,
                    limit=64,
                    socket_factory=functools.partial(own_socket, on_loop=self._looped),
                ),
                trust_env=False,  # never through a proxy: certainly not through ourselves
                auto_decompress=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            # Closing can wait on connections the upstream already dropped: bound it.
            try:
                await asyncio.wait_for(self._session.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "unit-gateway: closing the connection to %s timed out", self.upstream.url
                )

    async def create_token(
        self,
        identity: Identity,
        scopes: frozenset[str],
        expires_in: int,
        *,
        verification: tuple[str, str] | None = None,
        jwt_token: str | None = None,
    ) -> tuple[str, float]:
        """Create a token; returns it with its usable lifetime in seconds."""
        path, data_type, _ = _TOKEN_PATHS[identity.kind]
        attributes: dict[str, Any] = {"scope": " ".join(sorted(scopes)), "expiresIn": expires_in}
        if verification is not None:
            attributes["verificationToken"], attributes["verificationCode"] = verification
        if jwt_token is not None:
            attributes["jwtToken"] = jwt_token
        step = f"creating a {identity.kind} token for {identity}"
        document = await self._post(path.format(identity.subject), data_type, attributes, step)
        try:
            token = document["data"]["attributes"]["token"]
            lifetime = usable_lifetime(token, document["data"]["attributes"].get("expiresIn"))
        except (KeyError, TypeError):
            raise TokenError(
                502, "token_response_invalid", f"{step}: Unit's answer had no token"
            ) from None
        return token, lifetime

    async def create_verification(self, identity: Identity, channel: str = "sms") -> str:
        path, _, data_type = _TOKEN_PATHS[identity.kind]
        step = f"starting two-factor verification for {identity}"
        document = await self._post(
            path.format(identity.subject) + "/verification", data_type, {"channel": channel}, step
        )
        try:
            return str(document["data"]["attributes"]["verificationToken"])
        except (KeyError, TypeError):
            raise TokenError(
                502, "token_response_invalid", f"{step}: Unit's answer had no verificationToken"
            ) from None

    async def forward(self, request: http.Request, deadline_seconds: float) -> http.Response:
        """Send a caller's request (with its new token) straight to this upstream, with
        ``deadline_seconds`` for Unit's answer."""
        headers = [
            (k, v) for k, v in request.headers.items(multi=True) if k.lower() not in _HOP_HEADERS
        ]
        try:
            async with self.session.request(
                request.method,
                self.upstream.url + request.path,
                headers=headers,
                data=request.raw_content or None,
                auto_decompress=False,
                # Unit's answer is the caller's, redirect or not: following it would send the
                # caller's request (its real body) to whatever host Unit names.
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=deadline_seconds),
            ) as upstream_response:
                content = await upstream_response.read()
                status = upstream_response.status
                codings = {
                    coding.strip().lower()
                    for name, value in upstream_response.raw_headers
                    if name.lower() == b"transfer-encoding"
                    for coding in value.split(b",")
                }
                raw_headers = [
                    (k, v)
                    for k, v in upstream_response.raw_headers
                    if k.decode("latin-1").lower() not in _HOP_HEADERS
                ]
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._connection_error(
                e,
                "retrying with a new token",
                deadline_seconds,
                "upstream",
                unreachable=502,
            ) from None
        if codings - {b"chunked", b"identity", b""}:
            # aiohttp undoes only the chunking and the header goes (a hop header): the body
            # would reach the token check, and the caller, still in a coding nothing declares.
            raise TokenError(
                502,
                "unit_answer_withheld",
                "retrying with a new token: Unit's answer has a Transfer-Encoding other than "
                "chunked, which the gateway cannot check",
            )
        response = http.Response.make(status, b"", raw_headers)
        # Keep the bytes exactly as Unit sent them, compressed or not.
        response.raw_content = content
        response.headers["Content-Length"] = str(len(content))
        return response

    def _connection_error(
        self, error: Exception, step: str, timeout: float, code: str, *, unreachable: int
    ) -> TokenError:
        """The caller's error when Unit cannot be reached or does not answer in time."""
        if isinstance(error, TimeoutError):
            return TokenError(
                504, f"{code}_timeout", f"{step}: Unit did not answer in {timeout:g} s"
            )
        detail = f"{step}: cannot reach {self.upstream.url}: {type(error).__name__}"
        if self.looped_at is not None and time.monotonic() - self.looped_at < LOOP_NAMED_SECONDS:
            detail += (
                " (a redirect rule sent the gateway's own connection back to the gateway; "
                "see its log)"
            )
        return TokenError(unreachable, f"{code}_unreachable", detail)

    def _looped(self) -> None:
        self.looped_at = time.monotonic()

    async def _post(
        self, path: str, data_type: str, attributes: dict[str, Any], step: str
    ) -> dict[str, Any]:
        body = json.dumps({"data": {"type": data_type, "attributes": attributes}})
        headers = {
            "Authorization": f"Bearer {self.org_token.reveal()}",
            "Content-Type": jsonapi.MEDIA_TYPE,
            "Accept": jsonapi.MEDIA_TYPE,
        }
        try:
            async with self.session.post(
                self.upstream.url + path,
                data=body,
                headers=headers,
                # A redirect is no token: nothing of a token request (a JWT, a code) goes on.
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                content = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._connection_error(
                e, step, self.timeout, "token_endpoint", unreachable=503
            ) from None
        if status in (200, 201):
            try:
                return json.loads(content)
            except ValueError:
                raise TokenError(
                    502, "token_response_invalid", f"{step}: Unit's answer is not JSON"
                ) from None
        raise _upstream_refusal(step, status, content, attributes, retry_after)


#: What a token call sends that is a secret: Unit's error text must not hand it back.
_SECRET_ATTRIBUTES = ("verificationToken", "verificationCode", "jwtToken")


def _upstream_refusal(
    step: str, status: int, content: bytes, sent: dict[str, Any], retry_after: str | None = None
) -> TokenError:
    """Unit refused a token call: its error titles and details, for the caller, without any
    secret the call sent (should Unit quote one). A 429 keeps Unit's ``Retry-After``."""
    errors = jsonapi.errors_of(content) or []
    reason = (
        "; ".join(str(e.get("detail") or e.get("title")) for e in errors if isinstance(e, dict))
        or f"HTTP {status}"
    )
    for name in _SECRET_ATTRIBUTES:
        value = sent.get(name)
        if isinstance(value, str) and value:
            reason = reason.replace(value, f"[redacted:{name}]")
    if status == 429:
        wait = retry_after_seconds(retry_after) if retry_after else None
        return TokenError(
            429,
            "token_endpoint_rate_limited",
            f"{step}: Unit answered 429: {reason}",
            headers={"Retry-After": str(whole_seconds(wait))} if wait is not None else None,
        )
    if status >= 500:
        return TokenError(
            503 if status == 503 else 502,
            "token_endpoint_failed",
            f"{step}: Unit answered {status}: {reason}",
        )
    return TokenError(502, "token_refused", f"{step}: Unit answered {status}: {reason}")
