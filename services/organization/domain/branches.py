"""Branch naming rules for task reservations."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def generated_branch(prefix: str) -> str:
    """`prefix` + `-` + 4 random characters of [a-z0-9] (GENERATE reservations)."""
    return f"{prefix}-{''.join(secrets.choice(_ALPHABET) for _ in range(4))}"
