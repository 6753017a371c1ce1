"""Namespace secrets, as plugins see them through `container.secrets`.

Secrets are stored sealed (encrypted) in the catalog and opened only in the worker that runs the
plugin, with a key derived per namespace from the operator's master key: a token copied from one
namespace's records into another's cannot be opened there, and the associated data binds each
token to its name, so two secrets cannot be swapped either.

Format of a sealed token: base64(nonce[12] + AES-256-GCM ciphertext and tag), with
AAD = "<namespace>/<name>" and key = HKDF-SHA256(master, salt=b"sluice-secrets", info=namespace).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.sealed import Sealed
from events.errors import NotFound, PermanentError

__all__ = ["NamespaceBox", "SecretBox", "SecretNotFound", "SecretUnreadable", "SecretsAccessor"]

_SALT = b"sluice-secrets"
_NONCE_BYTES = 12
MIN_MASTER_KEY_BYTES = 32


class SecretUnreadable(PermanentError):
    """A sealed token that does not open with this key, namespace and name (or is not a token)."""

    error_type = "secret_unreadable"


class SecretNotFound(NotFound):
    error_type = "secret_not_found"


class SecretBox:
    """Seals and opens secrets with AES-256-GCM under per-namespace keys derived from `master_key`."""

    def __init__(self, master_key: bytes) -> None:
        if not isinstance(master_key, bytes) or len(master_key) < MIN_MASTER_KEY_BYTES:
            size = len(master_key) if isinstance(master_key, bytes) else type(master_key).__name__
            raise ValueError(f"the secrets master key must be at least {MIN_MASTER_KEY_BYTES} bytes, got {size}")
        self._master = master_key
        self._keys: dict[str, AESGCM] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "SecretBox(<master key hidden>)"

    def namespace_key(self, namespace: str) -> bytes:
        """The key of one namespace: what a plugin process of that namespace gets, never the master."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=namespace.encode()).derive(self._master)

    def _aead(self, namespace: str) -> AESGCM:
        with self._lock:
            aead = self._keys.get(namespace)
            if aead is None:
                aead = self._keys[namespace] = AESGCM(self.namespace_key(namespace))
            return aead

    def encrypt(self, namespace: str, name: str, plaintext: str) -> str:
        """Seal `plaintext` as secret `name` of `namespace`; a fresh random nonce every time."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead(namespace).encrypt(nonce, plaintext.encode(), f"{namespace}/{name}".encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, namespace: str, name: str, token: str) -> str:
        """Open `token`; raises `SecretUnreadable` for a wrong key, namespace or name, or a damaged token."""
        return _open(self._aead(namespace), namespace, name, token)


class NamespaceBox:
    """Opens the tokens of one namespace with that namespace's derived key (see
    `SecretBox.namespace_key`): what a plugin worker holds instead of the master key."""

    def __init__(self, namespace: str, key: bytes) -> None:
        self.namespace = namespace
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"NamespaceBox(namespace={self.namespace!r}, <key hidden>)"

    def decrypt(self, namespace: str, name: str, token: str) -> str:
        if namespace != self.namespace:
            raise SecretUnreadable(f"this worker holds no key for namespace {namespace!r}", details={"namespace": namespace})
        return _open(self._aead, namespace, name, token)


def _open(aead: AESGCM, namespace: str, name: str, token: str) -> str:
    unreadable = SecretUnreadable(
        f"secret {name!r} of namespace {namespace!r} cannot be decrypted: wrong key, namespace or name, or a damaged token",
        details={"namespace": namespace, "name": name},
    )
    try:
        raw = base64.b64decode(token.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError):
        raise unreadable from None
    if len(raw) <= _NONCE_BYTES:
        raise unreadable
    try:
        plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], f"{namespace}/{name}".encode())
    except InvalidTag:
        raise unreadable from None
    return plain.decode()


class SecretsAccessor(metaclass=Sealed):
    """`container.secrets`: one namespace's secrets, opened on demand.

    `sealed` maps names to tokens and is read live, so the store that fills it may update it.
    Plaintext is never cached here or shown in a repr.
    """

    def __init__(self, namespace: str, sealed: Mapping[str, str], box: SecretBox | NamespaceBox) -> None:
        self.namespace = namespace
        self._sealed = sealed
        self._box = box

    @classmethod
    def from_context(cls, namespace: str, context: Mapping[str, object]) -> SecretsAccessor:
        """From what `functions.records.secret_store.SecretsStore.context_for` hands a plugin process:
        `{"key": base64 namespace key, "sealed": {name: token}}` (empty: no secrets)."""
        key = context.get("key")
        sealed = dict(context.get("sealed") or {})  # type: ignore[call-overload]
        box = NamespaceBox(namespace, base64.b64decode(str(key))) if key else NamespaceBox(namespace, os.urandom(32))
        return cls(namespace, sealed, box)

    def __repr__(self) -> str:
        return f"SecretsAccessor(namespace={self.namespace!r}, names={len(self._sealed)})"

    async def get(self, name: str) -> str:
        """The plaintext of secret `name`."""
        token = self._sealed.get(name)
        if token is None:
            available = sorted(self._sealed)
            raise SecretNotFound(
                f"secret {name!r} does not exist in namespace {self.namespace!r}; available: {', '.join(available) or 'none'}",
                details={"namespace": self.namespace, "name": name, "available": available},
            )
        return self._box.decrypt(self.namespace, name, token)

    async def list(self) -> list[str]:
        """The secret names (never their values), sorted."""
        return sorted(self._sealed)
