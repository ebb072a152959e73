"""Hot reads without the ORM: a Core SELECT built once, compiled once per dialect, run as one statement.

`Read(statement)` takes a `select()` whose inputs are named `bindparam()`s; `await db.fetch(read,
**params)` returns its rows as tuples, each value passed through the column type's result processor
(the same conversion SQLAlchemy applies: SQLite's datetime strings, JSON, booleans), in the
statement's column order (`read.keys`).

What it saves per call, compared with `AsyncSession.execute`: building the statement and its cache
key, the ORM session and its transaction, the greenlet bridge, and on SQLite aiosqlite's thread hop
per DBAPI call (cursor, execute, fetch, close, BEGIN, ROLLBACK). On SQLite the statement runs on a
reader thread of the `Database` with its own read-only `sqlite3` connection: one hop per read (a
`point` read runs on the loop's thread instead, on a connection of its own), and
one statement is one implicit read transaction (a consistent snapshot, and in WAL mode it sees
every transaction committed before it started, so a caller reads its own writes). On PostgreSQL it
runs as one statement (no BEGIN/COMMIT round trips) on a connection of an asyncpg pool kept for
these reads (no SQLAlchemy checkout, nor overflow connections opened and closed per call);
asyncpg caches the prepared statement per connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select


class Compiled:
    """One `Read` compiled for one dialect: SQL text, parameter order and converters."""

    __slots__ = ("bind", "defaults", "names", "result", "sql")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        if "POSTCOMPILE" in self.sql:  # `in_(…)`: SQLAlchemy expands its list per execution
            raise ValueError("Read takes no IN list (expanding parameter); use or_(col == v, …)")
        positions = compiled.positiontup
        if positions is None:  # a named-parameter dialect: not used by the mesh's drivers
            raise ValueError(f"Read needs a positional paramstyle, not {dialect.paramstyle}")
        self.names: tuple[str, ...] = tuple(positions)
        # Values fixed in the statement (literals such as `status != 'killed'`), passed like the others.
        self.defaults: dict[str, Any] = dict(compiled.params)
        binds = compiled._bind_processors
        self.bind: tuple[Callable[[Any], Any] | None, ...] = tuple(
            cast("Callable[[Any], Any] | None", binds.get(n)) for n in self.names
        )
        processors = [
            column.type._cached_result_processor(dialect, None) for column in compiled._result_columns
        ]
        # (position, converter) of the columns that need one (SQLite: datetimes, booleans, JSON).
        self.result: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (i, p) for i, p in enumerate(processors) if p is not None
        )

    def args(self, params: dict[str, Any]) -> list[Any]:
        out = []
        for name, process in zip(self.names, self.bind, strict=True):
            value = params[name] if name in params else self.defaults[name]
            out.append(process(value) if process is not None else value)
        return out

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[list[Any]]:
        out = []
        for r in raw:
            row = list(r)
            for i, process in self.result:
                row[i] = process(row[i])
            out.append(row)
        return out


class Fetched:
    """Rows as the driver returned them (`raw`: tuples, or asyncpg Records, which compare like
    tuples) and, on demand, converted (`rows()`). Equal raw rows convert to equal rows, so a caller
    can compare `raw` with an earlier read's before paying for any conversion."""

    __slots__ = ("_compiled", "raw")

    def __init__(self, raw: Sequence[Sequence[Any]], compiled: Compiled) -> None:
        self.raw, self._compiled = raw, compiled

    def rows(self) -> list[list[Any]]:
        """The rows as lists of values converted like SQLAlchemy converts them."""
        return self._compiled.rows(self.raw)


class Read:
    """A SELECT run by `Database.fetch`; build it once (module level) and reuse it.

    `point=True` marks a read of a few rows by key (an index lookup, e.g. one task and its sessions):
    on a SQLite file it then runs on the event loop's thread, whose cost (tens of microseconds) is
    below that of the hop to a reader thread; reads of unbounded size keep the hop."""

    def __init__(self, statement: Select[Any], *, point: bool = False) -> None:
        self.statement = statement
        self.point = point
        self.keys: tuple[str, ...] = tuple(statement.selected_columns.keys())
        self._compiled: dict[str, Compiled] = {}

    def compiled(self, dialect: Dialect) -> Compiled:
        key = f"{dialect.name}+{dialect.driver}"
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = Compiled(self.statement, dialect)
        return found
