"""An engine that opens one span per statement around the real one, with `[tracing] enabled`.

Every query of the store goes through the engine interface, so wrapping the engine traces
SQLite and PostgreSQL alike without touching either. Spans are named by verb and table
(`SELECT devices`), never carry the statement's values, and a transaction is one span with its
statements as children.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Final

from osnova_server.store.engine import Args, Engine, Row, Transaction
from osnova_server.tracing import Span, Tracing, statement_name

TRANSACTION_SPAN: Final = "transaction"


class _TracedTransaction:
    """A transaction whose statements are spans."""

    __slots__ = ("_engine", "_inner")

    def __init__(self, inner: Transaction, engine: TracedEngine) -> None:
        self._inner = inner
        self._engine = engine

    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run one statement in its span."""
        with self._engine.statement_span(sql):
            return await self._inner.execute(sql, args)

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        """Read one row in its span."""
        with self._engine.statement_span(sql):
            return await self._inner.fetch_one(sql, args)


class TracedEngine:
    """`Engine` around another engine, one CLIENT span per statement."""

    __slots__ = ("_inner", "_tracing", "errors", "name", "path")

    def __init__(self, inner: Engine, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing
        self.name = inner.name
        self.errors = inner.errors
        path = getattr(inner, "path", None)
        self.path: Path | None = path if isinstance(path, Path) else None

    def statement_span(self, sql: str) -> AbstractContextManager[Span]:
        """The span of one statement: `db.system.name` and the statement's name, nothing else."""
        name = statement_name(sql)
        return self._tracing.span(name, "client", {"db.system.name": self.name, "db.query.summary": name})

    async def fetch_all(self, sql: str, args: Args = ()) -> list[Row]:
        """Every row of a query, in its span."""
        with self.statement_span(sql):
            return await self._inner.fetch_all(sql, args)

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        """The first row of a query, in its span."""
        with self.statement_span(sql):
            return await self._inner.fetch_one(sql, args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_TracedTransaction]:
        """One span for the transaction, its statements as children."""
        with self._tracing.span(TRANSACTION_SPAN, "client", {"db.system.name": self.name}):
            async with self._inner.transaction() as tx:
                yield _TracedTransaction(tx, self)

    async def schema_version(self) -> int:
        """The schema version, in a span."""
        with self._tracing.span("schema_version", "client", {"db.system.name": self.name}):
            return await self._inner.schema_version()

    async def migrate(self, target: int, statements: Sequence[str]) -> None:
        """One migration, in a span."""
        with self._tracing.span("migrate", "client", {"db.system.name": self.name, "osnova.schema.target": target}):
            await self._inner.migrate(target, statements)

    async def ping(self) -> bool:
        """Whether the database answers, in a span."""
        with self._tracing.span("ping", "client", {"db.system.name": self.name}):
            return await self._inner.ping()

    async def close(self) -> None:
        """Close the real engine."""
        await self._inner.close()
