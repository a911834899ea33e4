"""Redaction: what is secret (``rules``), finding it in bodies, headers and text (``engine``,
``flow_walk``, ``stream_text``), and the addon that keeps real secrets out of flows
(``addon``)."""
