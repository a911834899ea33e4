"""The configuration: its schema and loading (``schema``), the generated reference
(``reference``), the addon that holds the loaded configuration and tells the other addons of
each change (``core``), and what the health probes report (``health``). The lowest layer of the
gateway but for ``unit_api`` and ``metrics.registry``: nothing here imports an addon."""
