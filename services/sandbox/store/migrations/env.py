"""Alembic environment of the sandbox service: platform tables + services.sandbox.store.tables."""

from services.platform.db.migrations import run_env
from services.sandbox.store.tables import metadata

run_env(metadata)
