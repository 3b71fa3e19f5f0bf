"""The one place that knows SQL: schema, migrations and every query, over one SQLite database.

The database lives in `state_dir` in WAL mode with `synchronous=FULL`, and every change is one
transaction that is committed before the call returns, so an answered success survives `kill -9`
and a power cut. aiosqlite runs each statement on the connection's own thread, so the event
loop never waits on the disk. Reads of the small, hot tables (apps, devices) are answered from
memory, refreshed from the rows each change commits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiosqlite

from osnova_server.security.roles import DEFAULT_DEVICE_ROLE, Role
from osnova_server.snapshot import SnapshotError, save_pre_migration_copy

_LOGGER = logging.getLogger(__name__)

DATABASE_NAME: Final = "osnova.db"

# Forward-only migrations: MIGRATIONS[n] takes a database from user_version n to n + 1.
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
        banned_until REAL NOT NULL,
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


class StoreError(Exception):
    """The database cannot be opened or migrated; the message says what to do."""


@dataclass(frozen=True, slots=True)
class AppRecord:
    """An installed app as stored."""

    id: str
    name: str
    version: str
    description: str
    icon_uri: str
    manifest_uri: str
    manifest: dict[str, Any]
    installed_at: str

    def to_json(self) -> dict[str, Any]:
        """The `apps.list` shape of CONTRACT 4."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "icon_uri": self.icon_uri,
            "manifest_uri": self.manifest_uri,
            "installed_at": self.installed_at,
            "components": self.manifest.get("components", []),
        }


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A paired device as stored."""

    device_id: str
    name: str
    paired_at: str
    last_seen: str | None
    revoked: bool
    revoked_at: str | None = None
    role: Role = DEFAULT_DEVICE_ROLE
    # "admin", the id of the device that issued the code, or None (paired before it was recorded).
    paired_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `devices.list` shape of CONTRACT 4."""
        return {
            "device_id": self.device_id,
            "name": self.name,
            "role": self.role.value,
            "paired_at": self.paired_at,
            "paired_by": self.paired_by,
            "last_seen": self.last_seen,
            "revoked": self.revoked,
        }


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A refresh token's row: its argon2 hash, owner, and whether it was already rotated."""

    lookup: str
    device_id: str
    hash: str
    rotated: bool


@dataclass(frozen=True, slots=True)
class BanRecord:
    """An address refused until `banned_until` (epoch seconds)."""

    address: str
    banned_until: float
    reason: str
    created_at: str


class Store:
    """The server's SQLite database, opened once per process."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._apps: dict[str, AppRecord] = {}
        self._devices: dict[str, DeviceRecord] = {}
        self._app_listing: list[dict[str, Any]] | None = None
        # One connection serves every coroutine, so transactions must not interleave.
        self._write_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, state_dir: Path) -> Store:
        """Open (creating and migrating as needed) the database in `state_dir`."""
        path = state_dir / DATABASE_NAME
        try:
            connection = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open database {path}: {err}") from None
        store = cls(connection, path)
        try:
            await store._configure()
            await store._migrate()
            await store._load_cache()
        except (sqlite3.Error, StoreError) as err:
            await connection.close()
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"cannot use database {path}: {err}") from None
        return store

    async def close(self) -> None:
        """Checkpoint the WAL and close the connection."""
        try:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            _LOGGER.warning("WAL checkpoint at close failed: %s", err)
        await self._db.close()

    async def _configure(self) -> None:
        """WAL, FULL sync (committed means on disk), foreign keys, a busy timeout."""
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=5000",
        ):
            await self._db.execute(pragma)

    async def schema_version(self) -> int:
        """The database's `user_version`."""
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        """Run every migration past the database's version, each in its own transaction."""
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this "
                f"osnova-server knows ({SCHEMA_VERSION}); install the newer version again"
            )
        if 0 < version < SCHEMA_VERSION:
            # A way back for the household: the database as the previous version left it.
            try:
                copy = await asyncio.to_thread(save_pre_migration_copy, self.path, version)
            except (OSError, SnapshotError) as err:
                raise StoreError(
                    f"cannot save a copy of {self.path} before migrating it ({err}); "
                    "free some space in the state directory and start again"
                ) from None
            _LOGGER.info(
                "saved a copy of the database (schema version %d) in %s before migrating to %d",
                version, copy, SCHEMA_VERSION,
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[target - 1]
            statements = [s.strip() for s in script.split(";") if s.strip()]
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {target}")
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            _LOGGER.info("database migrated to schema version %d", target)

    async def _load_cache(self) -> None:
        """Read the hot tables into memory."""
        async with self._db.execute(
            "SELECT id, name, version, description, icon_uri, manifest_uri, manifest, installed_at FROM apps"
        ) as cursor:
            self._apps = {row[0]: _app(row) async for row in cursor}
        async with self._db.execute(
            "SELECT device_id, name, paired_at, last_seen, revoked, revoked_at, role, paired_by FROM devices"
        ) as cursor:
            self._devices = {row[0]: _device(row) async for row in cursor}

    async def _write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> int:
        """Run statements as one committed transaction; return the last statement's rowcount."""
        async with self._write_lock:
            return await self._transaction(statements)

    async def _transaction(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> int:
        """The body of `_write`, run while holding the write lock."""
        await self._db.execute("BEGIN IMMEDIATE")
        rowcount = 0
        try:
            for sql, args in statements:
                cursor = await self._db.execute(sql, args)
                rowcount = cursor.rowcount
                await cursor.close()
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        return rowcount

    async def integrity_check(self) -> str:
        """`PRAGMA quick_check`'s verdict: "ok" when the database is sound."""
        async with self._db.execute("PRAGMA quick_check") as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else "no answer"

    async def ping(self) -> bool:
        """Whether the database answers a query."""
        async with self._db.execute("SELECT 1") as cursor:
            row = await cursor.fetchone()
        return row is not None and row[0] == 1

    # -- apps --------------------------------------------------------------------------------

    def apps(self) -> list[AppRecord]:
        """Installed apps, oldest install first."""
        return sorted(self._apps.values(), key=lambda app: (app.installed_at, app.id))

    def app_listing(self) -> list[dict[str, Any]]:
        """The `apps.list` answer, built once per change rather than once per call.

        Phones poll it; the list changes only on install and uninstall. Callers must not
        mutate what they get: the same list is handed to every caller until the next change.
        """
        if self._app_listing is None:
            self._app_listing = [app.to_json() for app in self.apps()]
        return self._app_listing

    async def put_app(self, app: AppRecord) -> None:
        """Install or replace an app (same id means upgrade)."""
        await self._write([(
            (
                "INSERT INTO apps (id, name, version, description, icon_uri, manifest_uri, manifest, installed_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET name=excluded.name, version=excluded.version,"
                " description=excluded.description, icon_uri=excluded.icon_uri,"
                " manifest_uri=excluded.manifest_uri, manifest=excluded.manifest,"
                " installed_at=excluded.installed_at"
            ),
            (app.id, app.name, app.version, app.description, app.icon_uri, app.manifest_uri,
             json.dumps(app.manifest), app.installed_at),
        )])
        self._apps[app.id] = app
        self._app_listing = None

    async def delete_app(self, app_id: str) -> bool:
        """Remove an app; whether it was installed."""
        removed = await self._write([("DELETE FROM apps WHERE id = ?", (app_id,))]) > 0
        self._apps.pop(app_id, None)
        self._app_listing = None
        return removed

    # -- devices and refresh tokens ----------------------------------------------------------

    def devices(self) -> list[DeviceRecord]:
        """Every device ever paired, revoked ones included, oldest first."""
        return sorted(self._devices.values(), key=lambda device: (device.paired_at, device.device_id))

    def device(self, device_id: str) -> DeviceRecord | None:
        """One device by id."""
        return self._devices.get(device_id)

    async def add_device(self, device: DeviceRecord, refresh: RefreshRecord, created_at: str) -> None:
        """Register a freshly paired device together with its first refresh token."""
        await self._write([
            (
                (
                    "INSERT INTO devices (device_id, name, paired_at, last_seen, revoked, role, paired_by)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?)"
                ),
                (device.device_id, device.name, device.paired_at, device.last_seen, device.role.value,
                 device.paired_by),
            ),
            (
                "INSERT INTO refresh_tokens (lookup, device_id, hash, created_at) VALUES (?, ?, ?, ?)",
                (refresh.lookup, refresh.device_id, refresh.hash, created_at),
            ),
        ])
        self._devices[device.device_id] = device

    async def revoke_device(self, device_id: str, revoked_at: str) -> bool:
        """Mark a device revoked; whether it exists."""
        changed = await self._write([(
            "UPDATE devices SET revoked = 1, revoked_at = COALESCE(revoked_at, ?) WHERE device_id = ?",
            (revoked_at, device_id),
        )])
        current = self._devices.get(device_id)
        if current is not None and not current.revoked:
            self._devices[device_id] = _replace_device(current, revoked=True, revoked_at=revoked_at)
        return changed > 0

    async def set_device_role(self, device_id: str, role: Role) -> bool:
        """Change a device's role; whether it exists."""
        changed = await self._write([("UPDATE devices SET role = ? WHERE device_id = ?", (role.value, device_id))])
        current = self._devices.get(device_id)
        if current is not None:
            self._devices[device_id] = _replace_device(current, role=role)
        return changed > 0

    async def delete_device(self, device_id: str) -> bool:
        """Forget a device and its refresh tokens; whether it existed."""
        removed = await self._write([
            ("DELETE FROM refresh_tokens WHERE device_id = ?", (device_id,)),
            ("DELETE FROM devices WHERE device_id = ?", (device_id,)),
        ]) > 0
        self._devices.pop(device_id, None)
        return removed

    async def refresh_token(self, lookup: str) -> RefreshRecord | None:
        """The refresh token row whose lookup key matches, rotated or not."""
        async with self._db.execute(
            "SELECT lookup, device_id, hash, rotated FROM refresh_tokens WHERE lookup = ?", (lookup,)
        ) as cursor:
            row = await cursor.fetchone()
        return RefreshRecord(row[0], row[1], row[2], bool(row[3])) if row else None

    async def rotate_refresh_token(self, old_lookup: str, new: RefreshRecord, created_at: str) -> bool:
        """Retire `old_lookup` and store `new` in one transaction; False if it was already rotated."""
        async with self._write_lock:
            return await self._rotate(old_lookup, new, created_at)

    async def _rotate(self, old_lookup: str, new: RefreshRecord, created_at: str) -> bool:
        """The body of `rotate_refresh_token`, run while holding the write lock."""
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = await self._db.execute(
                "UPDATE refresh_tokens SET rotated = 1 WHERE lookup = ? AND rotated = 0", (old_lookup,)
            )
            if cursor.rowcount != 1:
                await self._db.execute("ROLLBACK")
                return False
            await self._db.execute(
                "INSERT INTO refresh_tokens (lookup, device_id, hash, created_at) VALUES (?, ?, ?, ?)",
                (new.lookup, new.device_id, new.hash, created_at),
            )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        return True

    async def touch_devices(self, last_seen: dict[str, str]) -> None:
        """Write the devices' last-seen times gathered in memory since the previous flush."""
        known = {device_id: seen for device_id, seen in last_seen.items() if device_id in self._devices}
        if not known:
            return
        await self._write(
            ("UPDATE devices SET last_seen = ? WHERE device_id = ?", (seen, device_id))
            for device_id, seen in known.items()
        )
        for device_id, seen in known.items():
            self._devices[device_id] = _replace_device(self._devices[device_id], last_seen=seen)

    # -- settings ----------------------------------------------------------------------------

    async def setting(self, key: str) -> str | None:
        """A stored setting's value."""
        async with self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    async def put_setting(self, key: str, value: str) -> None:
        """Store a setting."""
        await self._write([(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )])

    # -- bans --------------------------------------------------------------------------------

    async def bans(self) -> list[BanRecord]:
        """Every stored ban, expired ones included (the caller filters by time)."""
        async with self._db.execute(
            "SELECT address, banned_until, reason, created_at FROM bans ORDER BY address"
        ) as cursor:
            return [BanRecord(row[0], float(row[1]), row[2], row[3]) async for row in cursor]

    async def put_ban(self, ban: BanRecord) -> None:
        """Store or extend a ban."""
        await self._write([(
            (
                "INSERT INTO bans (address, banned_until, reason, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(address) DO UPDATE SET banned_until = excluded.banned_until, reason = excluded.reason"
            ),
            (ban.address, ban.banned_until, ban.reason, ban.created_at),
        )])

    async def delete_ban(self, address: str) -> bool:
        """Lift a ban; whether there was one."""
        return await self._write([("DELETE FROM bans WHERE address = ?", (address,))]) > 0

    async def delete_expired_bans(self, now: float) -> int:
        """Forget bans that have run out."""
        return await self._write([("DELETE FROM bans WHERE banned_until <= ?", (now,))])


def _app(row: Any) -> AppRecord:
    """An AppRecord from a row of the apps table."""
    return AppRecord(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7])


def _device(row: Any) -> DeviceRecord:
    """A DeviceRecord from a row of the devices table."""
    return DeviceRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], Role(row[6]), row[7])


def _replace_device(device: DeviceRecord, **changes: Any) -> DeviceRecord:
    """A copy of a device record with some fields changed."""
    return dataclasses.replace(device, **changes)
