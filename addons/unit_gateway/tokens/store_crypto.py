"""The shared store's keys and encryption.

Every Redis name holds an identity only as a keyed hash, inside a Redis Cluster hash tag, so an
identity's keys share a slot. Every value is sealed with AES-256-GCM, bound to its key name;
one that does not open is a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from unit_gateway.unit_api.identity import Identity

# A sealed value: version, key id, nonce, ciphertext. The key id picks the keyring, so values
# sealed under the previous key still open during a rotation.
_VERSION = b"\x01"
_KID_BYTES = 4
_NONCE_BYTES = 12


def _derive(key: bytes, label: str, length: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=b"unitgw-store " + label.encode()).derive(
        key
    )


class Keyring:
    """What one store key gives: a cipher, its id, and the keyed hash that names things."""

    def __init__(self, key: bytes) -> None:
        self.kid = _derive(key, "key id", _KID_BYTES)
        self.aead = AESGCM(_derive(key, "aead"))
        self._names = _derive(key, "names")

    def tag(self, kind: str, text: str, length: int = 32) -> str:
        digest = hmac.new(self._names, f"{kind}\0{text}".encode(), hashlib.sha256).hexdigest()
        return digest[:length]

    def ref(self, identity: Identity) -> str:
        return self.tag("identity", f"{identity.kind}:{identity.subject or ''}")

    def seal(self, plain: bytes, name: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + self.kid + nonce + self.aead.encrypt(nonce, plain, name.encode())


def _scope_text(scopes: Iterable[str]) -> str:
    return " ".join(sorted(scopes))


class Names:
    """The Redis names of one identity under one keyring. ``{ref}`` is the hash tag."""

    def __init__(self, prefix: str, ring: Keyring, identity: Identity) -> None:
        self.ring = ring
        self.ref = ring.ref(identity)
        self.base = f"{prefix}{{{self.ref}}}:"

    @property
    def token_index(self) -> str:
        return self.base + "ti"

    @property
    def token_prefix(self) -> str:
        return self.base + "t:"

    def token_member(self, scopes: Iterable[str]) -> str:
        return self.ring.tag("scopes", _scope_text(scopes), 16)

    def lease(self, what: str) -> str:
        return self.base + "l:" + self.ring.tag("lease", what, 16)

    @property
    def window(self) -> str:
        return self.base + "v"

    @property
    def challenge_index(self) -> str:
        return self.base + "ci"

    @property
    def challenge_prefix(self) -> str:
        return self.base + "c:"

    def challenge_member(self, challenge_id: str) -> str:
        return self.ring.tag("challenge", challenge_id, 32)


def unseal(rings: Mapping[bytes, Keyring], blob: bytes, name: str) -> bytes | None:
    """What ``blob`` seals under ``name`` with the keyring its key id names, or None (no such
    key, tampered, or moved to another name)."""
    head = len(_VERSION) + _KID_BYTES
    ring = rings.get(blob[len(_VERSION) : head]) if blob[:1] == _VERSION else None
    if ring is None:
        return None
    nonce = blob[head : head + _NONCE_BYTES]
    try:
        return ring.aead.decrypt(nonce, blob[head + _NONCE_BYTES :], name.encode())
    except (InvalidTag, ValueError):
        return None
