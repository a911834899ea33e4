"""mitmproxy options the redaction addon checks whenever they change: those that would let
real values past redaction are refused, at start-up or when set later."""

from __future__ import annotations

from mitmproxy import ctx, exceptions

from unit_gateway.redaction.proxy_auth import _check_proxyauth_modes

#: mitmproxy's body_size_limit when none is set: mitmproxy holds a whole body in memory (the
#: gateway a redacted copy beside it), so one caller's upload must not outgrow a replica.
#: Room for a document upload (an image or a PDF); --set body_size_limit=... to change it.
DEFAULT_BODY_SIZE_LIMIT = "32m"


def check_options(updated: set[str]) -> None:
    """Refuse the options in ``updated`` that would let real values past redaction; keep
    connections lazy and bodies bounded."""
    if "body_size_limit" in updated and ctx.options.body_size_limit is None:
        ctx.options.update(body_size_limit=DEFAULT_BODY_SIZE_LIMIT)
    if "proxy_debug" in updated and ctx.options.proxy_debug:
        raise exceptions.OptionsError(
            "unit-gateway: proxy_debug logs raw wire data (real tokens); it is refused"
        )
    if "stream_large_bodies" in updated and ctx.options.stream_large_bodies:
        raise exceptions.OptionsError(
            "unit-gateway: stream_large_bodies is refused: streamed bodies bypass redaction "
            "and a streamed 401 cannot be retried"
        )
    if "modify_body" in updated and getattr(ctx.options, "modify_body", None):
        raise exceptions.OptionsError(
            "unit-gateway: modify_body is refused: it would edit the redacted copy of a "
            "body the flow holds, and that copy, not the real body, would then be sent"
        )
    if updated & {"proxyauth", "mode"} and getattr(ctx.options, "proxyauth", None):
        _check_proxyauth_modes(ctx.options.mode)
    if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
        # mitmproxy's eager strategy connects to the server before the request is read:
        # when Unit cannot be reached, the caller's CONNECT (regular mode) or TLS
        # handshake (reverse, transparent) fails, with nothing an SDK can read. Lazy
        # connects for the request, which then gets the JSON:API error saying why.
        ctx.options.update(connection_strategy="lazy")
