"""Shared test helpers: eventual assertions, free ports, real PostgreSQL databases and RabbitMQ vhosts."""

from tests.helpers.eventually import assert_eventually
from tests.helpers.infra import free_port, make_pg_database, unique_name

__all__ = ["assert_eventually", "free_port", "make_pg_database", "unique_name"]
