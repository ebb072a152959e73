"""What every flow needs, built once by `app.wire`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.github_data.providers import RetryPolicy, TokenSource
from services.github_data.usecases.events import Events
from services.platform.db import Database
from services.platform.settings import GithubSettings


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Deps:
    """Database, event writer, GitHub settings, the OAuth token source and the provider retry policy."""

    db: Database
    events: Events
    github: GithubSettings
    tokens: TokenSource
    retry: RetryPolicy | None = None
    now: Callable[[], datetime] = field(default=utcnow)
