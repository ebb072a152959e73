"""Resume tokens: opaque strings `v1.<scope tag>.<version>` that clients hand back unchanged.

The scope tag (12 hex digits of the scope's SHA-256) lets a stream recognise a token minted for a
different scope; such a token is treated like an expired one (the stream answers RESET), because
the only safe thing a client holding it can do is bootstrap again. Clients may compare tokens for
equality only; nothing else about the format is part of the contract.
"""

from __future__ import annotations

import hashlib

_PREFIX = "v1"


class BadToken(ValueError):
    """The token is malformed or belongs to another scope; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def scope_tag(scope: str) -> str:
    """12 hex digits identifying `scope` inside its tokens."""
    return hashlib.sha256(scope.encode()).hexdigest()[:12]


class TokenCodec:
    """Encodes and decodes the resume tokens of one scope (the tag is computed once)."""

    __slots__ = ("_prefix", "scope")

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self._prefix = f"{_PREFIX}.{scope_tag(scope)}."

    def encode(self, version: int) -> str:
        """Token for "everything up to and including `version` has been delivered"."""
        return f"{self._prefix}{version}"

    def decode(self, token: str) -> int:
        """The version inside `token`.

        Raises:
            BadToken: malformed (`malformed`) or minted for another scope (`foreign_scope`).
        """
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX or len(parts[1]) != 12:
            raise BadToken("malformed")
        if not (parts[2].isascii() and parts[2].isdigit()):
            raise BadToken("malformed")
        if not token.startswith(self._prefix):
            raise BadToken("foreign_scope")
        return int(parts[2])
