"""Credentials for this proxy: what mitmproxy's ``proxyauth`` leaves in a flow, and the
listeners it may be used with."""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import exceptions, http
from mitmproxy.proxy import mode_specs

from unit_gateway.net import jsonapi

_PROXY_AUTH = b"proxy-authorization"
#: Header fields (lower case) redaction leaves in place for ``proxyauth`` to read.
_PROXY_CREDENTIALS = frozenset({_PROXY_AUTH})


def _after_proxyauth(flow: http.HTTPFlow) -> None:
    """mitmproxy's proxyauth (a built-in addon, so it ran first) keeps (user, password) in
    the flow's metadata, which saved flows and mitmweb show: the user name is enough to say
    who sent the request. Its refusal is an HTML page: callers get a JSON:API error."""
    credentials = flow.metadata.get("proxyauth")
    if isinstance(credentials, tuple) and len(credentials) == 2:
        flow.metadata["proxyauth"] = (credentials[0], "[redacted]")
    response = flow.response
    if response is not None and response.status_code == 407 and "proxyauth" not in flow.metadata:
        flow.response = jsonapi.error_response(
            407,
            "proxy_authentication_required",
            "this gateway needs proxy credentials (Proxy-Authorization), and none valid came",
            headers={"Proxy-Authenticate": response.headers.get("Proxy-Authenticate", "Basic")},
        )


#: Listeners where proxyauth asks for credentials of a proxy (Proxy-Authorization, or SOCKS5's
#: own): elsewhere it takes Basic credentials from Authorization.
_PROXY_AUTH_MODES = (mode_specs.RegularMode, mode_specs.UpstreamMode, mode_specs.Socks5Mode)


def _check_proxyauth_modes(modes: Sequence[str]) -> None:
    """On any HTTP listener but a proxy's (reverse, transparent, local, WireGuard, TUN)
    mitmproxy's proxyauth wants Basic credentials in ``Authorization``, the header that carries
    the caller's Unit placeholder: no Unit client could send both. Refused at start (or when
    the option changes), not discovered as a 401 on every request."""
    for spec in modes:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError as e:
            raise exceptions.OptionsError(f"invalid mode {spec!r}: {e}") from e
        if isinstance(mode, mode_specs.DnsMode) or getattr(mode, "scheme", None) == "dns":
            continue  # a DNS listener carries no HTTP
        if not isinstance(mode, _PROXY_AUTH_MODES):
            raise exceptions.OptionsError(
                f"unit-gateway: proxyauth is refused with mode {spec}: there it takes Basic "
                "credentials from Authorization, the header that carries the Unit placeholder. "
                "Use it with regular, upstream or socks5 listeners only; limit who reaches "
                "other listeners by network (see docs/security.md)"
            )
