"""What every flow needs, built once by `app.wire`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from services.github_data.providers import RetryPolicy, TokenSource
from services.github_data.usecases.events import Events
from services.platform import clock
from services.platform.db import Database
from services.platform.secrets import SecretBox
from services.platform.settings import GithubSettings


@dataclass
class Deps:
    """Database, event writer, GitHub settings, the OAuth token source, the box that seals stored
    tokens (`Settings.credentials_key`) and the provider retry policy."""

    db: Database
    events: Events
    github: GithubSettings
    tokens: TokenSource
    box: SecretBox
    retry: RetryPolicy | None = None
    now: Callable[[], datetime] = field(default=clock.now)
