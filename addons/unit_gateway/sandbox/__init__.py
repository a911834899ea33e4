"""A local stand-in for Unit's sandbox API (https://api.s.unit.sh).

Faithful where the gateway depends on it (token endpoints, scopes, two-factor rules, expiry,
401/403/429, JSON:API errors) and fast enough never to be the bottleneck of a proxy benchmark.

Modules, one concern each:
    server        settings, start/stop, command line
    app           the aiohttp app and the request pipeline
    routes        route templates -> handlers
    token_api     customer/cardholder tokens and verifications
    resource_api  customers, accounts, applications
    card_api      cards and their secure data
    payment_api   payments and transactions
    resource_common  paging, filters, idempotent creates
    control       /__sandbox/* (stats, faults, clock, reset)
    auth          org token, minted tokens, verification tokens, JWTs
    data          the seeded resources
    wire          JSON:API requests and responses
    clock, limits, faults, stats, scopes, tls, context
"""

from .server import RunningSandbox, SandboxSettings, start

__all__ = ["RunningSandbox", "SandboxSettings", "start"]
