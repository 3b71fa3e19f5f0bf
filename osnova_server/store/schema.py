"""The schema, as forward-only migrations in the SQL both engines speak.

MIGRATIONS[n] takes a database from schema version n to n + 1. Types are the ones SQLite and
PostgreSQL read alike: TEXT, INTEGER (0/1 for flags), DOUBLE PRECISION (REAL affinity in SQLite,
float8 in PostgreSQL, where REAL would be a 4-byte float).
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: apps, devices with their refresh tokens, server settings.
    """
    CREATE TABLE apps (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        description TEXT NOT NULL,
        icon_uri TEXT NOT NULL,
        manifest_uri TEXT NOT NULL,
        manifest TEXT NOT NULL,
        installed_at TEXT NOT NULL
    );
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        paired_at TEXT NOT NULL,
        last_seen TEXT,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE refresh_tokens (
        lookup TEXT PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(device_id) ON DELETE CASCADE,
        hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        rotated INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX refresh_tokens_device ON refresh_tokens(device_id);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: persistent IP bans, and when a device was revoked.
    """
    CREATE TABLE bans (
        address TEXT PRIMARY KEY,
        banned_until DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    ALTER TABLE devices ADD COLUMN revoked_at TEXT;
    """,
    # 3: device roles (devices paired before roles existed are members), and who paired each
    # (NULL for those: it was not recorded).
    """
    ALTER TABLE devices ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
    ALTER TABLE devices ADD COLUMN paired_by TEXT;
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """The statements of one migration script (they hold no `;` inside literals)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
