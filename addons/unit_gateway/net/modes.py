"""Groups of mitmproxy's proxy modes the gateway treats alike."""

from __future__ import annotations

from mitmproxy.proxy import mode_specs

#: Modes where a request is addressed to the IP the client dialed, not to a name it chose.
TRANSPARENT_MODES = (
    mode_specs.TransparentMode,
    mode_specs.LocalMode,
    mode_specs.WireGuardMode,
    mode_specs.TunMode,
)
