"""Every query the server makes, over one engine; the hot tables (apps, devices) held in memory.

Each change is one transaction committed before the method returns, so an answered success
survives `kill -9`. Reads of apps and devices are answered from memory, refreshed from the rows
each change commits; in cluster mode another process's change arrives as a call to `reload`
(published by `on_change` through Redis), so every process's memory follows the shared rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from osnova_server.config import redacted_url
from osnova_server.security.roles import Role
from osnova_server.snapshot import SnapshotError, save_pre_migration_copy
from osnova_server.store.engine import Args, Engine, Row, SqliteEngine
from osnova_server.store.records import AppRecord, BanRecord, DeviceRecord, RefreshRecord
from osnova_server.store.schema import MIGRATIONS, SCHEMA_VERSION, statements
from osnova_server.store.traced import TracedEngine
from osnova_server.tracing import Tracing

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_NAME: Final = "osnova.db"
APPS: Final = "apps"
DEVICES: Final = "devices"

_APP_COLUMNS: Final = "id, name, version, description, icon_uri, manifest_uri, manifest, installed_at"
_DEVICE_COLUMNS: Final = "device_id, name, paired_at, last_seen, revoked, revoked_at, role, paired_by"

# Told (table, keys) after a change to a hot table commits; cluster mode tells the others.
ChangeHook = Callable[[str, Sequence[str]], Awaitable[None]]


class StoreError(Exception):
    """The database cannot be opened or migrated; the message says what to do."""


class Store:
    """The server's database, opened once per process."""

    def __init__(self, engine: Engine, tracing: Tracing | None = None) -> None:
        # With tracing, every statement passes a span on its way to the engine (store/traced.py).
        self.engine: Engine = TracedEngine(engine, tracing) if tracing is not None else engine
        self._sqlite = engine if isinstance(engine, SqliteEngine) else None
        self._apps: dict[str, AppRecord] = {}
        self._devices: dict[str, DeviceRecord] = {}
        self._app_listing: list[dict[str, Any]] | None = None
        self.on_change: ChangeHook | None = None
        # Rows another process changed that could not be read again yet (database down).
        self._stale: dict[str, set[str]] = {}
        # While `reload_all` reads: the rows this process changed meanwhile (it keeps those).
        self._changed_during_reload: set[tuple[str, str]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, state_dir: Path, url: str = "", migrate: bool = True, tracing: Tracing | None = None,
    ) -> Store:
        """Open (creating and migrating as needed) SQLite in `state_dir`, or PostgreSQL at `url`."""
        engine = await _open_engine(state_dir, url)
        store = cls(engine, tracing)
        try:
            if migrate:
                await store.migrate()
                await store._load_cache()
        except BaseException as err:
            # Closed whatever went wrong: aiosqlite's thread would otherwise keep the process alive.
            await engine.close()
            if isinstance(err, StoreError):
                raise
            if isinstance(err, engine.errors):
                raise StoreError(
                    f"cannot use database {store.where}: {err}; restore a backup with `osnova-server restore FILE`"
                ) from None
            raise
        return store

    @property
    def path(self) -> Path:
        """The SQLite file (cluster mode has none: its rows live in PostgreSQL)."""
        path = getattr(self.engine, "path", None)
        if not isinstance(path, Path):
            raise StoreError("the store is PostgreSQL; it has no database file")
        return path

    @property
    def where(self) -> str:
        """The database, named for messages (never with a password)."""
        path = getattr(self.engine, "path", None)
        return str(path) if path is not None else "PostgreSQL"

    @property
    def shared(self) -> bool:
        """Whether other processes change the same rows (PostgreSQL in cluster mode)."""
        return self._sqlite is None

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a failing database raises (background jobs catch these and retry later)."""
        return self.engine.errors

    async def close(self) -> None:
        """Close the engine (SQLite checkpoints its WAL first)."""
        await self.engine.close()

    async def schema_version(self) -> int:
        """The database's schema version."""
        return await self.engine.schema_version()

    async def migrate(self) -> None:
        """Run every migration past the database's version, each in its own transaction."""
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.where} has schema version {version}, newer than this "
                f"osnova-server knows ({SCHEMA_VERSION}); install the newer version again"
            )
        if 0 < version < SCHEMA_VERSION and self._sqlite is not None:
            # A way back for the household: the database as the previous version left it.
            # (PostgreSQL's operator backs up with pg_dump; see "Running more than one".)
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
            await self.engine.migrate(target, statements(MIGRATIONS[target - 1]))
            _LOGGER.info("database migrated to schema version %d", target)

    async def _load_cache(self) -> None:
        """Read the hot tables into memory; a row that cannot be read is a StoreError naming it."""
        self._apps = {
            row[0]: self._read_row(APPS, "id", row, _app)
            for row in await self.engine.fetch_all(f"SELECT {_APP_COLUMNS} FROM apps")
        }
        self._devices = {
            row[0]: self._read_row(DEVICES, "device_id", row, _device)
            for row in await self.engine.fetch_all(f"SELECT {_DEVICE_COLUMNS} FROM devices")
        }
        self._app_listing = None

    def _read_row(self, table: str, key: str, row: Row, read: Callable[[Row], T]) -> T:
        """`read(row)`, or a StoreError saying which row of which table cannot be read, and why."""
        try:
            return read(row)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise StoreError(
                f"database {self.where}: the row of table {table} with {key} {row[0]!r} cannot be read "
                f"({reason[:200]}); restore a backup with `osnova-server restore FILE`, or delete that row"
            ) from None

    async def reload(self, table: str, keys: Sequence[str]) -> None:
        """Read rows another process changed into memory again (cluster mode).

        If the database cannot be read now, the rows are remembered and `reload_stale` tries
        again later.
        """
        try:
            await self._reload(table, keys)
        except self.errors:
            self._stale.setdefault(table, set()).update(keys)
            raise

    async def reload_stale(self) -> None:
        """Read again the rows an earlier `reload` could not."""
        while self._stale:
            table, keys = self._stale.popitem()
            await self.reload(table, sorted(keys))

    async def _reload(self, table: str, keys: Sequence[str]) -> None:
        """The body of `reload`."""
        if table == APPS:
            for app_id in keys:
                row = await self.engine.fetch_one(f"SELECT {_APP_COLUMNS} FROM apps WHERE id = ?", (app_id,))
                if row is None:
                    self._apps.pop(app_id, None)
                else:
                    self._apps[app_id] = _app(row)
            self._app_listing = None
        elif table == DEVICES:
            for device_id in keys:
                row = await self.engine.fetch_one(
                    f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)
                )
                if row is None:
                    self._devices.pop(device_id, None)
                else:
                    self._devices[device_id] = _device(row)

    async def reload_all(self) -> None:
        """Read every hot table again (after missing other processes' changes).

        A row this process changes while the tables are read keeps its in-memory value: the
        read may have started before that commit.
        """
        self._changed_during_reload = set()
        try:
            app_rows = await self.engine.fetch_all(f"SELECT {_APP_COLUMNS} FROM apps")
            device_rows = await self.engine.fetch_all(f"SELECT {_DEVICE_COLUMNS} FROM devices")
        finally:
            changed, self._changed_during_reload = self._changed_during_reload, None
        apps = {row[0]: _app(row) for row in app_rows}
        devices = {row[0]: _device(row) for row in device_rows}
        for table, key in changed:
            if table == APPS:
                _keep(self._apps, apps, key)
            else:
                _keep(self._devices, devices, key)
        self._apps, self._devices = apps, devices
        self._app_listing = None

    async def revoked_devices(self) -> set[str]:
        """The ids of revoked devices, read from the database (not from memory)."""
        return {str(row[0]) for row in await self.engine.fetch_all("SELECT device_id FROM devices WHERE revoked = 1")}

    async def _changed(self, table: str, keys: Sequence[str]) -> None:
        """Tell the hook (cluster mode) that rows of a hot table changed, before the caller answers.

        Awaited, so a process killed right after answering has already told the others.
        """
        if self._changed_during_reload is not None:
            self._changed_during_reload.update((table, key) for key in keys)
        if self.on_change is not None and keys:
            await self.on_change(table, list(keys))

    async def _write(self, changes: Iterable[tuple[str, Args]]) -> int:
        """Run statements as one committed transaction; return the last statement's rowcount."""
        rowcount = 0
        async with self.engine.transaction() as tx:
            for sql, args in changes:
                rowcount = await tx.execute(sql, args)
        return rowcount

    async def integrity_check(self) -> str:
        """SQLite's `PRAGMA quick_check` verdict ("ok" when sound); PostgreSQL checks its own pages."""
        if self._sqlite is not None:
            return await self._sqlite.integrity_check()
        return "ok"

    async def ping(self) -> bool:
        """Whether the database answers a query."""
        return await self.engine.ping()

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
        await self._changed(APPS, [app.id])

    async def delete_app(self, app_id: str) -> bool:
        """Remove an app; whether it was installed."""
        removed = await self._write([("DELETE FROM apps WHERE id = ?", (app_id,))]) > 0
        self._apps.pop(app_id, None)
        self._app_listing = None
        await self._changed(APPS, [app_id])
        return removed

    # -- devices and refresh tokens ----------------------------------------------------------

    def devices(self) -> list[DeviceRecord]:
        """Every device ever paired, revoked ones included, oldest first."""
        return sorted(self._devices.values(), key=lambda device: (device.paired_at, device.device_id))

    def device(self, device_id: str) -> DeviceRecord | None:
        """One device by id."""
        return self._devices.get(device_id)

    async def find_device(self, device_id: str) -> DeviceRecord | None:
        """One device by id; on a shared store one not in memory is looked up in the database.

        Another process may have paired it a moment ago, before its announcement arrived here.
        """
        device = self._devices.get(device_id)
        if device is None and self.shared:
            await self.reload(DEVICES, [device_id])
            device = self._devices.get(device_id)
        return device

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
        await self._changed(DEVICES, [device.device_id])

    async def revoke_device(self, device_id: str, revoked_at: str) -> bool:
        """Mark a device revoked; whether it exists."""
        changed = await self._write([(
            "UPDATE devices SET revoked = 1, revoked_at = COALESCE(revoked_at, ?) WHERE device_id = ?",
            (revoked_at, device_id),
        )])
        current = self._devices.get(device_id)
        if current is not None and not current.revoked:
            self._devices[device_id] = _replace_device(current, revoked=True, revoked_at=revoked_at)
        await self._changed(DEVICES, [device_id])
        return changed > 0

    async def set_device_role(self, device_id: str, role: Role) -> bool:
        """Change a device's role; whether it exists."""
        changed = await self._write([("UPDATE devices SET role = ? WHERE device_id = ?", (role.value, device_id))])
        current = self._devices.get(device_id)
        if current is not None:
            self._devices[device_id] = _replace_device(current, role=role)
        await self._changed(DEVICES, [device_id])
        return changed > 0

    async def delete_device(self, device_id: str) -> bool:
        """Forget a device and its refresh tokens; whether it existed."""
        removed = await self._write([
            ("DELETE FROM refresh_tokens WHERE device_id = ?", (device_id,)),
            ("DELETE FROM devices WHERE device_id = ?", (device_id,)),
        ]) > 0
        self._devices.pop(device_id, None)
        await self._changed(DEVICES, [device_id])
        return removed

    async def refresh_token(self, lookup: str) -> RefreshRecord | None:
        """The refresh token row whose lookup key matches, rotated or not."""
        row = await self.engine.fetch_one(
            "SELECT lookup, device_id, hash, rotated FROM refresh_tokens WHERE lookup = ?", (lookup,)
        )
        return RefreshRecord(row[0], row[1], row[2], bool(row[3])) if row else None

    async def rotate_refresh_token(self, old_lookup: str, new: RefreshRecord, created_at: str) -> bool:
        """Retire `old_lookup` and store `new` in one transaction; False if it was already rotated."""
        async with self.engine.transaction() as tx:
            changed = await tx.execute(
                "UPDATE refresh_tokens SET rotated = 1 WHERE lookup = ? AND rotated = 0", (old_lookup,)
            )
            if changed != 1:
                return False  # nothing was written: committing the empty transaction is harmless
            await tx.execute(
                "INSERT INTO refresh_tokens (lookup, device_id, hash, created_at) VALUES (?, ?, ?, ?)",
                (new.lookup, new.device_id, new.hash, created_at),
            )
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
        await self._changed(DEVICES, list(known))

    # -- settings ----------------------------------------------------------------------------

    async def setting(self, key: str) -> str | None:
        """A stored setting's value."""
        row = await self.engine.fetch_one("SELECT value FROM settings WHERE key = ?", (key,))
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
        rows = await self.engine.fetch_all("SELECT address, banned_until, reason, created_at FROM bans ORDER BY address")
        return [BanRecord(row[0], float(row[1]), row[2], row[3]) for row in rows]

    async def put_ban(self, ban: BanRecord) -> None:
        """Store or extend a ban."""
        await self._write([(
            (
                "INSERT INTO bans (address, banned_until, reason, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(address) DO UPDATE SET banned_until = excluded.banned_until, reason = excluded.reason"
            ),
            (ban.address, float(ban.banned_until), ban.reason, ban.created_at),
        )])

    async def delete_ban(self, address: str) -> bool:
        """Lift a ban; whether there was one."""
        return await self._write([("DELETE FROM bans WHERE address = ?", (address,))]) > 0

    async def delete_expired_bans(self, now: float) -> int:
        """Forget bans that have run out."""
        return await self._write([("DELETE FROM bans WHERE banned_until <= ?", (float(now),))])


async def _open_engine(state_dir: Path, url: str) -> Engine:
    """SQLite in `state_dir` for an empty url; PostgreSQL (asyncpg, imported only then) otherwise."""
    if not url:
        path = state_dir / DATABASE_NAME
        try:
            return await SqliteEngine.open(path)
        except sqlite3.Error as err:
            raise StoreError(
                f"cannot open database {path}: {err}; restore a backup with `osnova-server restore FILE`"
            ) from None
    from osnova_server.store.postgres import DatabaseUnavailable, PostgresEngine

    try:
        return await PostgresEngine.open(url)
    except DatabaseUnavailable:
        raise StoreError(
            f"cannot reach PostgreSQL at {redacted_url(url)}; start it, or check [store] url"
        ) from None


def _keep(current: dict[str, T], fresh: dict[str, T], key: str) -> None:
    """Make `fresh` hold what `current` holds for `key` (a row changed here during a reload)."""
    if key in current:
        fresh[key] = current[key]
    else:
        fresh.pop(key, None)


def _app(row: Row) -> AppRecord:
    """An AppRecord from a row of the apps table."""
    manifest = json.loads(row[6])
    if not isinstance(manifest, dict):
        raise TypeError("the stored manifest is not a JSON object")
    return AppRecord(row[0], row[1], row[2], row[3], row[4], row[5], manifest, row[7])


def _device(row: Row) -> DeviceRecord:
    """A DeviceRecord from a row of the devices table."""
    return DeviceRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], Role(row[6]), row[7])


def _replace_device(device: DeviceRecord, **changes: Any) -> DeviceRecord:
    """A copy of a device record with some fields changed."""
    return dataclasses.replace(device, **changes)
