"""The engine interface the store's queries run on, and its SQLite implementation.

Queries are written once, with `?` placeholders, in the SQL both engines speak; an engine runs
them. A change is one transaction (`transaction()`); reads run outside one. SQLite (aiosqlite,
one connection with its own thread, WAL, `synchronous=FULL`) is the embedded default; the
PostgreSQL engine (postgres.py, asyncpg) is loaded only when `[store] url` names one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Protocol

import aiosqlite

from osnova_server.errors import InternalError

_LOGGER = logging.getLogger(__name__)

Row = Sequence[Any]
Args = Sequence[Any]

_PRAGMAS: Final = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class Transaction(Protocol):
    """The statements of one change, committed together or not at all."""

    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run one statement; the number of rows it changed."""

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        """The first row of a query, read inside the transaction."""


class Engine(Protocol):
    """A database the store's queries run on."""

    name: str
    # What a failing database raises through this engine (for callers that retry later).
    errors: tuple[type[BaseException], ...]

    async def fetch_all(self, sql: str, args: Args = ()) -> list[Row]:
        """Every row of a query."""

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        """The first row of a query, or None."""

    def transaction(self) -> Any:
        """`async with engine.transaction() as tx`: one committed change (rolled back on error)."""

    async def schema_version(self) -> int:
        """The schema version the database is at (0 when empty)."""

    async def migrate(self, target: int, statements: Sequence[str]) -> None:
        """Run one migration's statements and record `target`, in one transaction."""

    async def ping(self) -> bool:
        """Whether the database answers a query."""

    async def close(self) -> None:
        """Close the connections."""


class _SqliteTransaction:
    """A transaction on the one SQLite connection."""

    __slots__ = ("_db",)

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, args: Args = ()) -> int:
        cursor = await self._db.execute(sql, args)
        rowcount = cursor.rowcount
        await cursor.close()
        return rowcount

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchone()


class DiskFull(InternalError):
    """A write failed because the disk is full; nothing was changed (-32603, logged as "disk full")."""

    def __init__(self) -> None:
        super().__init__("Internal error: the server's disk is full, so nothing was changed; try again later")


class SqliteEngine:
    """The embedded database: one SQLite file in state_dir."""

    name = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        # One connection serves every coroutine, so transactions must not interleave.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteEngine:
        """Open the database file (created if missing) in WAL mode with full sync."""
        connection = aiosqlite.connect(path, isolation_level=None)
        try:
            await connection
        except Exception:
            # aiosqlite stops its worker thread with a future nobody awaits (omnilib/aiosqlite#389):
            # unless we wait for the thread, it reports to the loop after asyncio.run closed it,
            # a traceback printed after the one-line error.
            await asyncio.to_thread(connection._thread.join)
            raise
        try:
            for pragma in _PRAGMAS:
                await connection.execute(pragma)
        except BaseException:
            await connection.close()
            raise
        return cls(connection, path)

    async def fetch_all(self, sql: str, args: Args = ()) -> list[Row]:
        async with self._db.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    async def fetch_one(self, sql: str, args: Args = ()) -> Row | None:
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTransaction]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTransaction(self._db)
                await self._db.execute("COMMIT")
            except BaseException as err:
                cause = await self._failed_write(err)
                if cause is err:
                    raise
                raise cause from err

    async def _failed_write(self, err: BaseException) -> BaseException:
        """Roll back after `err` and return what to raise: DiskFull for a full disk, else `err`.

        SQLite may already have rolled back (it does on SQLITE_FULL), so a failing ROLLBACK is
        logged at debug level and never hides the cause, which is what the log names.
        """
        try:
            await self._db.execute("ROLLBACK")
        except sqlite3.Error as rollback:
            _LOGGER.debug("rollback after a failed write: %s", rollback)
        if isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
            _LOGGER.error(
                "disk full: could not write to %s, so the change was not made; free space on its filesystem",
                self.path,
            )
            return DiskFull()
        return err

    async def schema_version(self) -> int:
        row = await self.fetch_one("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def migrate(self, target: int, statements: Sequence[str]) -> None:
        async with self.transaction() as tx:
            for statement in statements:
                await tx.execute(statement)
            await tx.execute(f"PRAGMA user_version = {int(target)}")

    async def ping(self) -> bool:
        row = await self.fetch_one("SELECT 1")
        return row is not None and row[0] == 1

    async def integrity_check(self) -> str:
        """`PRAGMA quick_check`'s verdict: "ok" when the database is sound."""
        row = await self.fetch_one("PRAGMA quick_check")
        return str(row[0]) if row else "no answer"

    async def close(self) -> None:
        """Checkpoint the WAL and close the connection."""
        try:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            _LOGGER.warning("WAL checkpoint at close failed: %s", err)
        await self._db.close()
