"""`osnova-server migrate`: the explicit migration a cluster's operator runs once before an upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from osnova_server.store import DATABASE_NAME, MIGRATIONS, SCHEMA_VERSION
from tests.conftest import cli, make_config, write_config


def _v1(state_dir: Path) -> Path:
    """A database as the first schema version left it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / DATABASE_NAME
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
    return path


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def test_migrate_brings_a_sqlite_database_to_this_version_then_has_nothing_to_do(tmp_path: Path) -> None:
    database = _v1(tmp_path / "state")
    config = write_config(tmp_path / "server.toml", make_config(tmp_path / "state"))
    done = cli("--config", str(config), "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"database migrated from schema version 1 to {SCHEMA_VERSION}"
    assert _version(database) == SCHEMA_VERSION
    again = cli("--config", str(config), "migrate")
    assert again.returncode == 0
    assert again.stdout.strip() == f"database already at schema version {SCHEMA_VERSION} (this version's); nothing to do"


def test_migrate_creates_the_schema_in_an_empty_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path / "server.toml", make_config(tmp_path / "state", store={"url": pg_url}))
    done = cli("--config", str(config), "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"database migrated from schema version 0 to {SCHEMA_VERSION}"
    assert not (tmp_path / "state" / DATABASE_NAME).exists()


def test_migrate_refuses_an_unreachable_postgresql_in_one_line(tmp_path: Path) -> None:
    from tests.services import free_port

    url = f"postgresql://osnova:hunter2@127.0.0.1:{free_port()}/osnova"
    config = write_config(tmp_path / "server.toml", make_config(tmp_path / "state", store={"url": url}))
    done = cli("--config", str(config), "migrate")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr
    assert done.stderr.strip() == (
        f"osnova-server: cannot reach PostgreSQL at {url.replace(':hunter2', ':***')}; start it, or check [store] url"
    )


def test_migrate_of_a_database_sqlite_cannot_open_is_one_line(tmp_path: Path) -> None:
    """The one-line error and nothing after it: aiosqlite's worker must not report to a closed loop."""
    state = tmp_path / "state"
    (state / DATABASE_NAME).mkdir(parents=True)  # what SQLite cannot open, even for root
    config = write_config(tmp_path / "server.toml", make_config(state))
    for _ in range(3):  # the worker races asyncio.run's end: one run alone may be lucky
        done = cli("--config", str(config), "migrate")
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == (
            f"osnova-server: cannot open database {state / DATABASE_NAME}: unable to open database file; "
            "restore a backup with `osnova-server restore FILE`\n"
        )


async def test_migrate_beside_a_running_server_is_refused_naming_its_pid(tmp_path: Path) -> None:
    import asyncio
    import os

    from tests.conftest import running_server

    config = make_config(tmp_path / "state")
    path = write_config(tmp_path / "server.toml", config)
    async with running_server(config):
        done = await asyncio.to_thread(cli, "--config", str(path), "migrate")
    assert (done.returncode, done.stdout) == (1, "")
    assert f"(PID {os.getpid()})" in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.count("stop it first") == 1, done.stderr
