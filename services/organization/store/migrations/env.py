"""Alembic environment of the organization service: platform tables + services.organization.store.tables."""

from services.organization.store.tables import metadata
from services.platform.db.migrations import run_env

run_env(metadata)
