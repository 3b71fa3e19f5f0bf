"""The durable store: one set of queries and migrations over SQLite (the default) or PostgreSQL.

`schema` holds the migrations, `records` the rows handed out, `engine` the engine interface and
SQLite, `postgres` the PostgreSQL engine (imported only when `[store] url` is set), and
`queries` the Store every service uses. Hand-written SQL rather than SQLAlchemy: importing
SQLAlchemy's asyncio layer alone costs about 400 ms here, most of the start-up budget, and the
two dialects differ in this schema only by their placeholders (see the issue 16 note).
"""

from __future__ import annotations

from osnova_server.store.queries import DATABASE_NAME, Store, StoreError
from osnova_server.store.records import AppRecord, BanRecord, DeviceRecord, RefreshRecord
from osnova_server.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "DATABASE_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AppRecord",
    "BanRecord",
    "DeviceRecord",
    "RefreshRecord",
    "Store",
    "StoreError",
]
