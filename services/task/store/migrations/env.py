"""Alembic environment of the task service: platform tables + services.task.store.tables."""

from services.platform.db.migrations import run_env
from services.task.store.tables import metadata

run_env(metadata)
