"""Which provider the sandbox service starts with (`build_provider`): bubblewrap wherever it can
confine; the unconfined `local` provider only when asked for (or, in dev only, when bubblewrap cannot
run), always with a `sandbox_unconfined` warning; production never starts unconfined by accident.

"bubblewrap cannot run" is made real by a PATH without `bwrap` on it (the probe then finds nothing)."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from services.platform.settings import SandboxSettings, Settings
from services.sandbox.providers import BubblewrapProvider, LocalProvider, ProviderUnavailable, build_provider
from services.sandbox.providers.bubblewrap import available

KEY = "k" * 32


def _settings(tmp_path: Path, provider: str, environment: str = "dev") -> Settings:
    production: dict[str, Any] = (
        {"internal_auth_secret": KEY, "gateway": {"session_secret": KEY, "dev_sign_in": False}}
        if environment == "production"
        else {}
    )
    return Settings(
        data_dir=tmp_path / "data",
        environment=environment,
        sandbox=SandboxSettings(provider=provider),
        **production,
    )


def _build(settings: Settings) -> tuple[LocalProvider, list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        provider = build_provider(settings, {"PATH": "/usr/bin:/bin"})
    return provider, logs


def _unconfined(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "sandbox_unconfined" and e["log_level"] == "warning"]


@pytest.mark.parametrize("environment", ["dev", "production"])
def test_local_is_an_explicit_opt_in_warned_at_start(tmp_path: Path, environment: str) -> None:
    provider, logs = _build(_settings(tmp_path, "local", environment))
    assert type(provider) is LocalProvider
    assert _unconfined(logs), logs


def test_without_bubblewrap_production_refuses_to_start_and_dev_falls_back_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-bwrap-here"))
    assert available() is not None
    for provider, environment in (
        ("bubblewrap", "dev"),
        ("auto", "production"),
        ("bubblewrap", "production"),
    ):
        with pytest.raises(ProviderUnavailable, match="cannot be confined"):
            build_provider(_settings(tmp_path, provider, environment), {})
    fallback, logs = _build(_settings(tmp_path, "auto", "dev"))
    assert type(fallback) is LocalProvider
    assert _unconfined(logs) and "bwrap" in str(_unconfined(logs)[0]["reason"]), logs


@pytest.mark.skipif(available() is not None, reason=f"bubblewrap unavailable: {available()}")
@pytest.mark.parametrize("environment", ["dev", "production"])
async def test_auto_confines_where_bubblewrap_can(tmp_path: Path, environment: str) -> None:
    provider, logs = _build(_settings(tmp_path, "auto", environment))
    try:
        assert isinstance(provider, BubblewrapProvider)
        assert not _unconfined(logs), logs
    finally:
        await provider.close()
