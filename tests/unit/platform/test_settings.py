"""Settings: environment mapping, production guards, and the README table kept in sync with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from scripts.settings_table import table
from services.platform.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_readme_configuration_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", readme, re.S)
    assert match, "README.md lost its settings-table markers"
    assert match.group(1).strip() == table().strip(), (
        "run `python scripts/settings_table.py` and update README"
    )


def test_nested_settings_come_from_double_underscore_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_MESSAGING__PREFETCH", "7")
    monkeypatch.setenv("FOUNDRY_TASK_PORT", "6000")
    settings = Settings()
    assert settings.messaging.prefetch == 7
    assert settings.target_of("task") == "127.0.0.1:6000"


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(ValidationError, match="FOUNDRY_INTERNAL_AUTH_SECRET"):
        Settings(environment="production")


@pytest.mark.parametrize(
    "weak", ["", "x", "s" * 31, "CHANGE-ME-internal-auth-secret", "change-me-" + "s" * 40]
)
def test_production_refuses_empty_short_and_placeholder_signing_keys(weak: str) -> None:
    """An empty or short HMAC key lets anyone forge a caller (`service/task` included); the example
    Secret's CHANGE-ME placeholders must not start a production process either."""
    strong = "s" * 32
    for internal, session, name in (
        (weak, strong, "FOUNDRY_INTERNAL_AUTH_SECRET"),
        (strong, weak, "FOUNDRY_GATEWAY__SESSION_SECRET"),
    ):
        with pytest.raises(ValidationError, match=name):
            Settings(
                environment="production",
                internal_auth_secret=internal,
                gateway={"session_secret": session, "dev_sign_in": False},
            )
    Settings(
        environment="production",
        internal_auth_secret=strong,
        gateway={"session_secret": strong, "dev_sign_in": False},
    )


def test_embedded_default_uses_one_sqlite_file_per_service(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded
    assert settings.database_url_for("task").endswith(f"{tmp_path}/task.sqlite3")
    assert settings.schema_for("task") is None


def test_postgres_gives_each_service_its_own_schema() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1/x", amqp_url="amqp://localhost/"
    )
    assert not settings.embedded
    assert settings.schema_for("github_data") == "github_data"


@pytest.mark.parametrize("weak", ["", "s" * 31, "dev-insecure-change-me", "CHANGE-ME-credentials-key"])
def test_production_organization_service_refuses_a_weak_credentials_key(weak: str) -> None:
    """The key that encrypts organizations' model API keys at rest: checked where it is used (the
    organization service's start), like the signing keys."""
    strong = "s" * 32
    production = {"environment": "production", "internal_auth_secret": strong}
    gateway = {"session_secret": strong, "dev_sign_in": False}
    with pytest.raises(ValueError, match="FOUNDRY_CREDENTIALS_KEY"):
        Settings(**production, gateway=gateway, credentials_key=weak).require_credentials_key()  # type: ignore[arg-type]
    Settings(**production, gateway=gateway, credentials_key=strong).require_credentials_key()  # type: ignore[arg-type]
    Settings(credentials_key=weak).require_credentials_key()  # dev: the development default is fine
