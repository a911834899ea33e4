"""Metrics: the Prometheus registry every part of the gateway records into (``registry``, a
low layer), and the addon that counts every flow and serves ``/metrics``, the probes and the
access log (``exporter``, ``access_log``, a high layer: it reads the token addon)."""
