"""The `store` section: the Redis gateway replicas share state through, and the checks of its
resolved URL and keys."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from unit_gateway.config.base import _Model
from unit_gateway.config.secret_refs import Secret, SecretRef

STORE_SCHEMES = ("redis", "rediss")
#: Bytes of an encryption key for values in the shared store (AES-256-GCM).
STORE_KEY_BYTES = 32
_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class StoreSettings(_Model):
    """A Redis that gateway replicas share cached tokens, open challenges, verification
    windows and mint leases through."""

    url: SecretRef
    """URL of the Redis: `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. A
    secret reference, as the URL may carry the password. With `cluster: true`, any one node of
    the cluster (the others are discovered; the database must be 0)."""
    cluster: bool = False
    """The URL names a node of a Redis Cluster rather than a single Redis (or a primary with
    replicas behind one address). Each identity's keys share one hash slot either way."""
    ca_file: str | None = Field(default=None, min_length=1)
    """PEM file of the certificate authorities that a `rediss://` server's certificate is
    checked against, relative to the configuration file; unset: the system's. Only with
    `rediss://`."""
    key: SecretRef
    """32 random bytes in base64 (`openssl rand -base64 32`): encrypts every value the
    gateway puts in Redis (AES-256-GCM) and keys the hashes that name identities there, so
    Redis holds no token and no customer or card id in the clear."""
    previous_key: SecretRef | None = None
    """The key used before `key`, while rotating: values it encrypted are still read (and
    identities' tokens and challenges are still found under the names it made), nothing is
    written with it. Remove it once every replica runs with the new `key` and the values it
    wrote have expired (a token's lifetime). Replicas with different keys share no mint leases
    or verification windows: roll a new key out quickly."""
    operation_timeout_seconds: float = Field(default=0.25, gt=0, le=5)
    """Deadline of each call to Redis. A call that misses it falls back to the replica's own
    state (never failing a request for it); three in a row, or a refused connection, count as
    Redis being down: the replica stops asking until a probe finds it back."""
    probe_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    """While Redis is down, how often the replica checks whether it is back."""
    key_prefix: str = "unitgw:"
    """Prefix of every key and channel the gateway uses in Redis: lets gateways of several
    environments share one Redis, and an ACL user be limited to keys `~unitgw:*` and
    channels `&unitgw:*`. No `{` or `}` (they would move keys between cluster slots)."""
    mint_lease_seconds: float = Field(default=15.0, gt=0, le=600)
    """How long a replica minting a token holds the identity's lease, during which other
    replicas wait for its token instead of minting their own. A replica that dies mid-mint
    blocks the others at most this long. Must be at least twice `unit.token_timeout_seconds`
    (a mint can take a verification call and a token call)."""

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        # Braces would change the hash slot of every key (Redis Cluster hash tags).
        if not _PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError("must be 1 to 64 letters, digits or _ . : -")
        return prefix


def store_key(secret: Secret) -> bytes:
    """A store key's bytes. Raises ValueError (never naming the value) unless it is 32 bytes
    in base64."""
    try:
        key = base64.b64decode(secret.reveal(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != STORE_KEY_BYTES:
        raise ValueError(
            f"must be {STORE_KEY_BYTES} random bytes in base64 (openssl rand -base64 32)"
        )
    return key


def _store_problems(store: StoreSettings, secrets: dict[str, Secret]) -> list[str]:
    """Checks of the store's resolved secrets. Messages never quote the URL: it may hold the
    password."""
    problems: list[str] = []
    url = secrets.get("store.url")
    if url is not None:
        try:
            parts = urlsplit(url.reveal())
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            scheme, host, database = parts.scheme, parts.hostname, parts.path.strip("/")
        except ValueError:
            scheme, host, database = "", None, ""
        if scheme not in STORE_SCHEMES or not host:
            problems.append(
                "store.url: must be a redis://host:port or rediss://host:port URL "
                "(the value is not shown: it may hold a password)"
            )
        elif database and not database.isdigit():
            problems.append("store.url: the path must be a database number, such as /0")
        elif store.cluster and database not in ("", "0"):
            problems.append("store.url: Redis Cluster has database 0 only")
        elif store.ca_file is not None and scheme != "rediss":
            problems.append("store.ca_file: only applies to a rediss:// URL")
    for name in ("store.key", "store.previous_key"):
        secret = secrets.get(name)
        if secret is None:
            continue
        try:
            store_key(secret)
        except ValueError as e:
            problems.append(f"{name}: {e}")
    return problems
