"""Every use of mitmproxy's internals: the check that the running mitmproxy has what the
gateway relies on (``gate``), how replacements are installed and removed (``patches``), the
replacements themselves (``patch_point``, ``early_errors``, ``hook_table``, ``option_masks``)
and the gateway's place in mitmproxy's addon chain (``addon_order``). No other module of the
gateway imports a private mitmproxy name or replaces anything in mitmproxy."""
