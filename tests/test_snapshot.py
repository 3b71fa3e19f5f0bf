"""Consistent database copies: taken while the server writes, and kept (3 of them) before migrations."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from osnova_server.snapshot import BACKUPS_DIR, PRE_MIGRATION_KEPT, SnapshotError, snapshot_database
from osnova_server.store import DATABASE_NAME, SCHEMA_VERSION, Store
from tests.conftest import make_config, running_server
from tests.test_store import make_v1_database, user_version


def _apps_in(path: Path) -> list[str]:
    """The app ids stored in a database file."""
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM apps ORDER BY id")]
    finally:
        db.close()


async def test_a_migration_first_saves_a_copy_and_logs_its_path(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_v1_database(state_dir)
    with caplog.at_level(logging.INFO, logger="osnova_server.store"):
        store = await Store.open(state_dir)
    await store.close()
    [copy] = sorted((state_dir / BACKUPS_DIR).iterdir())
    assert copy.name.startswith("osnova-schema1-") and copy.suffix == ".db"
    assert copy.stat().st_mode & 0o777 == 0o600
    assert user_version(copy) == 1  # as the old version left it
    assert _apps_in(copy) == ["ant://notes"]
    assert user_version(state_dir / DATABASE_NAME) == SCHEMA_VERSION
    [line] = [r.getMessage() for r in caplog.records if "saved a copy" in r.getMessage()]
    assert str(copy) in line and "schema version 1" in line


async def test_only_the_last_three_copies_are_kept(state_dir: Path) -> None:
    made: list[Path] = []
    for _ in range(PRE_MIGRATION_KEPT + 1):
        (state_dir / DATABASE_NAME).unlink(missing_ok=True)
        for leftover in ("-wal", "-shm"):
            (state_dir / f"{DATABASE_NAME}{leftover}").unlink(missing_ok=True)
        make_v1_database(state_dir)
        before = set((state_dir / BACKUPS_DIR).glob("*.db")) if (state_dir / BACKUPS_DIR).exists() else set()
        store = await Store.open(state_dir)
        await store.close()
        [new] = set((state_dir / BACKUPS_DIR).glob("*.db")) - before
        made.append(new)
    assert sorted((state_dir / BACKUPS_DIR).glob("*.db")) == sorted(made[1:])
    assert not made[0].exists()


async def test_a_current_database_is_not_copied(state_dir: Path) -> None:
    store = await Store.open(state_dir)  # a new database: nothing to go back to
    await store.close()
    store = await Store.open(state_dir)  # already current: no migration
    await store.close()
    assert not (state_dir / BACKUPS_DIR).exists()


async def test_a_snapshot_taken_while_the_server_writes_is_whole(state_dir: Path, tmp_path: Path) -> None:
    async with running_server(make_config(state_dir)) as running:
        store = running.runtime.store

        async def write(count: int) -> None:
            for n in range(count):
                await store.put_setting(f"key-{n}", "x" * 500)

        writing = asyncio.create_task(write(300))
        copies = []
        while not writing.done():
            target = tmp_path / f"copy-{len(copies)}.db"
            await asyncio.to_thread(snapshot_database, store.path, target)
            copies.append(target)
        await writing
    assert copies
    for copy in copies:
        db = sqlite3.connect(copy)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            count = db.execute("SELECT count(*) FROM settings WHERE key LIKE 'key-%'").fetchone()[0]
            keys = {row[0] for row in db.execute("SELECT key FROM settings WHERE key LIKE 'key-%'")}
        finally:
            db.close()
        assert keys == {f"key-{n}" for n in range(count)}  # a prefix of the writes, never torn


def test_no_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no database at"):
        snapshot_database(tmp_path / "missing.db", tmp_path / "copy.db")
    assert not (tmp_path / "missing.db").exists()
    assert not (tmp_path / "copy.db").exists()
