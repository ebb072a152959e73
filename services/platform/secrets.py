"""Secrets at rest: `SecretBox` seals a value under `Settings.credentials_key` (Fernet: AES-128-CBC +
HMAC-SHA256, keyed by the SHA-256 of the setting), bound to the context it belongs to (e.g. an
organization and a variable, or a user), so a sealed value copied to another row does not open.

Used for organizations' model API keys (organization service) and users' GitHub OAuth tokens
(github_data service). Changing the key makes every sealed value unreadable: they must be set again.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

_SEP = "\0"


class SecretUnreadable(Exception):
    """A sealed value that does not open: sealed under another key, corrupted, or bound to another
    context than the one asked for."""


class SecretBox:
    """Seals and opens secrets with one key (any string; its SHA-256 is the 32-byte Fernet key)."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))

    def seal(self, value: str, *context: str) -> bytes:
        """The Fernet token (ASCII bytes) of `value` bound to `context` (strings without NUL)."""
        if any(_SEP in part for part in (*context, value)):
            raise ValueError("a secret and its context must not contain NUL characters")
        return self._fernet.encrypt(_SEP.join((*context, value)).encode())

    def open(self, sealed: bytes | str, *context: str) -> str:
        """The value sealed with exactly `context`. Raises SecretUnreadable otherwise."""
        try:
            plain = self._fernet.decrypt(
                sealed.encode() if isinstance(sealed, str) else bytes(sealed)
            ).decode()
        except InvalidToken as exc:
            raise SecretUnreadable("sealed under another key, or corrupted") from exc
        *bound, value = plain.split(_SEP, len(context))
        if bound != list(context):
            raise SecretUnreadable("sealed for another row")
        return value
