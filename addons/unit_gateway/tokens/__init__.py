"""Tokens: minting and caching Unit tokens for the identities placeholders name (``service``,
``cache``, ``fleet``, the shared ``store``), checking what Unit hands back (``guard``), and the
addon that puts real tokens on requests (``addon``)."""
