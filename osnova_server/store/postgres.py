"""The PostgreSQL engine (asyncpg) of cluster mode: the same queries as SQLite, on a pool.

Imported only when `[store] url` is set. Statements are written with `?` placeholders; each is
rewritten once to PostgreSQL's `$n`. Several processes may start at once: migrations take an
advisory lock inside their transaction, so exactly one runs each. While the server cannot reach
PostgreSQL every call that needs it fails at once with "database unavailable" (-32603), and the
pool is tried again with exponential backoff rather than on every request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

from osnova_server.errors import InternalError

_LOGGER = logging.getLogger(__name__)

Row = Sequence[Any]
Args = Sequence[Any]

POOL_MIN: Final = 1
POOL_MAX: Final = 10
CONNECT_TIMEOUT: Final = 3.0
COMMAND_TIMEOUT: Final = 10.0
BACKOFF_FIRST: Final = 0.2
BACKOFF_MAX: Final = 5.0
# pg_advisory_xact_lock key of migrations: "osnova" in ASCII.
MIGRATION_LOCK: Final = 0x6F736E6F7661
UNAVAILABLE: Final = "database unavailable: PostgreSQL cannot be reached; try again in a moment"

# What losing the server looks like through asyncpg.
CONNECTION_ERRORS: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


class DatabaseUnavailable(InternalError):
    """PostgreSQL cannot be reached: -32603 with a message that says so."""

    def __init__(self) -> None:
        super().__init__(UNAVAILABLE)


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`?` placeholders as `$1, $2, ...` (the store's SQL has no `?` inside literals)."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


def _rowcount(status: str) -> int:
    """The row count at the end of a command status such as `UPDATE 3` or `INSERT 0 1`."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _PostgresTransaction:
    """A transaction on one pooled connection."""

    __slots__ = ("_connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, args: Args = ()) -> int:
        return _rowcount(await self._connection.execute(numbered(sql), *args))

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        row: Row | None = await self._connection.fetchrow(numbered(sql), *args)
        return row


class PostgresEngine:
    """A PostgreSQL database shared by every process of a cluster."""

    name = "postgresql"
    errors: tuple[type[BaseException], ...] = (DatabaseUnavailable, asyncpg.PostgresError)

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = None
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._backoff = BACKOFF_FIRST
        # Until opened, a failure is the caller's one-line StoreError, not a warning of ours.
        self._opened = False

    @classmethod
    async def open(cls, url: str) -> PostgresEngine:
        """Connect (raising DatabaseUnavailable if PostgreSQL does not answer) and make the schema table."""
        engine = cls(url)
        await engine._get_pool()
        async with engine.transaction() as tx:
            # Under the migrations' lock: two processes starting on an empty database at once.
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        engine._opened = True
        return engine

    async def _get_pool(self) -> asyncpg.Pool:
        """The pool, made on first use and again after PostgreSQL came back (with backoff)."""
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is not None:
                return self._pool
            if time.monotonic() < self._retry_at:
                raise DatabaseUnavailable()
            try:
                self._pool = await asyncpg.create_pool(
                    self.url, min_size=POOL_MIN, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                )
            except CONNECTION_ERRORS as err:
                self._failed(err)
                raise DatabaseUnavailable() from None
            if self._backoff > BACKOFF_FIRST:
                _LOGGER.info("PostgreSQL is reachable again")
            self._backoff = BACKOFF_FIRST
            return self._pool

    def _failed(self, err: BaseException) -> None:
        """Note a lost connection: try again only after the backoff."""
        if self._backoff == BACKOFF_FIRST and self._opened:
            _LOGGER.warning("PostgreSQL is unreachable (%s); calls that need it fail until it is back", err)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    async def _lost(self, err: BaseException) -> DatabaseUnavailable:
        """Drop the pool after a connection error; the error to raise."""
        self._failed(err)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
        return DatabaseUnavailable()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._get_pool()
        try:
            async with pool.acquire() as connection:
                yield connection
        except CONNECTION_ERRORS as err:
            raise await self._lost(err) from None

    async def _read(self, sql: str, args: Args, one: bool) -> Any:
        """Run a query; once more on a fresh pool if a pooled connection turns out dead.

        After PostgreSQL restarts, every connection the pool kept is dead although the server
        answers again; a read can safely be tried again (a change cannot: see `transaction`).
        """
        for attempt in (1, 2):
            had_pool = self._pool is not None
            try:
                async with self._connection() as connection:
                    if one:
                        return await connection.fetchrow(numbered(sql), *args)
                    return list(await connection.fetch(numbered(sql), *args))
            except DatabaseUnavailable:
                if attempt == 2 or not had_pool:
                    raise
                self._retry_at = 0.0
        raise AssertionError("unreachable")

    async def fetch_all(self, sql: str, args: Args = ()) -> list[Row]:
        rows: list[Row] = await self._read(sql, args, one=False)
        return rows

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        row: Row | None = await self._read(sql, args, one=True)
        return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        async with self._connection() as connection, connection.transaction():
            yield _PostgresTransaction(connection)

    async def schema_version(self) -> int:
        row = await self.fetch_one("SELECT max(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    async def migrate(self, target: int, statements: Sequence[str]) -> None:
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            row = await tx.fetch_one("SELECT max(version) FROM schema_version")
            # Another process may have run it while this one waited for the lock.
            if row is not None and row[0] is not None and int(row[0]) >= target:
                return
            for statement in statements:
                await tx.execute(statement)
            await tx.execute("DELETE FROM schema_version")
            await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))

    async def ping(self) -> bool:
        row = await self.fetch_one("SELECT 1")
        return row is not None and row[0] == 1

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
