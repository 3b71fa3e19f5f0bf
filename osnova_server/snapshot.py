"""Consistent copies of the live SQLite database, and the copies kept before each migration.

Copying `osnova.db` with `cp` while the server writes is unsafe in WAL mode: committed pages
may still sit in `osnova.db-wal`, and a copy taken between two writes is torn. SQLite's online
backup API (`sqlite3.Connection.backup`) reads one consistent view through SQLite itself, WAL
included, while the server goes on writing; the copy is then switched out of WAL mode so that
the one file holds everything.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Final
from urllib.parse import quote

from osnova_server.files import fsync_directory, make_private_dirs
from osnova_server.timestamps import utc_now

_LOGGER = logging.getLogger(__name__)

BACKUPS_DIR: Final = "backups"
PRE_MIGRATION_KEPT: Final = 3
_PRE_MIGRATION_PREFIX: Final = "osnova-schema"
_COPY_MODE: Final = 0o600


class SnapshotError(Exception):
    """The database could not be copied; the message says why and what to do."""


def file_stamp(moment: datetime | None = None) -> str:
    """A UTC time for file names, sortable and free of colons: 20261202T020500Z."""
    return (moment or utc_now()).strftime("%Y%m%dT%H%M%SZ")


def snapshot_database(source: Path, target: Path) -> int:
    """Copy the database at `source` into the new file `target` (0600); return its schema version.

    Safe while another process writes `source`. Blocking: run it in a thread from the loop.
    """
    if not source.is_file():
        raise SnapshotError(f"no database at {source}; start the server once to create it")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _COPY_MODE)
    os.close(fd)  # sqlite opens the empty file as an empty database, keeping the mode
    try:
        # mode=rw: never create a database where there was none.
        reader = sqlite3.connect(f"file:{quote(str(source))}?mode=rw", uri=True)
        try:
            writer = sqlite3.connect(target)
            try:
                reader.backup(writer)
                writer.execute("PRAGMA journal_mode=DELETE")  # everything in the one file
                verdict = writer.execute("PRAGMA quick_check").fetchone()
                version = int(writer.execute("PRAGMA user_version").fetchone()[0])
            finally:
                writer.close()
        finally:
            reader.close()
    except sqlite3.Error as err:
        target.unlink(missing_ok=True)
        raise SnapshotError(f"cannot copy database {source}: {err}") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if not verdict or verdict[0] != "ok":
        target.unlink(missing_ok=True)
        raise SnapshotError(
            f"database {source} fails SQLite's check ({verdict[0] if verdict else 'no answer'}); "
            "restore it from an earlier backup"
        )
    with open(target, "rb") as stream:
        os.fsync(stream.fileno())
    return version


def save_pre_migration_copy(database: Path, version: int, kept: int = PRE_MIGRATION_KEPT) -> Path:
    """Copy the database into `backups/` before migrating it from `version`; keep the newest `kept`."""
    directory = database.parent / BACKUPS_DIR
    make_private_dirs(directory)
    target = directory / f"{_PRE_MIGRATION_PREFIX}{version}-{file_stamp()}.db"
    suffix = 1
    while target.exists():  # two upgrades within one second
        target = directory / f"{_PRE_MIGRATION_PREFIX}{version}-{file_stamp()}-{suffix}.db"
        suffix += 1
    snapshot_database(database, target)
    fsync_directory(directory)
    for old in pre_migration_copies(directory)[:-kept]:
        old.unlink(missing_ok=True)
    return target


def pre_migration_copies(directory: Path) -> list[Path]:
    """The pre-migration copies in `directory`, oldest first."""
    copies = [path for path in directory.glob(f"{_PRE_MIGRATION_PREFIX}*.db") if path.is_file()]
    return sorted(copies, key=lambda path: (path.stat().st_mtime_ns, path.name))
