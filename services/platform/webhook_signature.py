"""GitHub webhook signatures (`X-Hub-Signature-256`), checked by the gateway before anything is stored.

GitHub signs the raw request body with HMAC-SHA256 under the webhook secret and sends
`X-Hub-Signature-256: sha256=<64 lower-case hex digits>`.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value GitHub would send for `body` (`sha256=<hex>`); for tests and tools."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True when `header` is the HMAC-SHA256 of the exact `body` bytes under `secret`.

    False for a missing, malformed or wrong signature, and always False for an empty secret (an
    unconfigured secret must not accept everything). Comparison is constant-time.
    """
    if not secret or not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body), header.strip().lower())
