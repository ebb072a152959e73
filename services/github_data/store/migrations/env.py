"""Alembic environment of the github_data service: platform tables + services.github_data.store.tables."""

from services.github_data.store.tables import metadata
from services.platform.db.migrations import run_env

run_env(metadata)
