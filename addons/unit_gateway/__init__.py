"""unit-gateway: mitmproxy addons between your services and the Unit banking API."""

__version__ = "0.1.0"
