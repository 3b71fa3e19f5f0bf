"""The SQLite store: migrations, a newer schema or an unreadable row refused in one line, kill -9, a full disk."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from osnova_server.client import RpcCallError
from osnova_server.errors import INTERNAL_ERROR
from osnova_server.security.roles import Role
from osnova_server.security.tokens import Scope, TokenAuthority
from osnova_server.store import DATABASE_NAME, MIGRATIONS, SCHEMA_VERSION, BanRecord, Store, StoreError
from tests.conftest import (
    TEST_SECRET,
    RunningServer,
    ServerProcess,
    cli,
    free_port,
    make_config,
    running_server,
    write_config,
)
from tests.test_pairing import pair_device

INSTALLS: Final = 50
CONCURRENCY: Final = 10
KILL_AFTER: Final = 20

NOTES_MANIFEST: Final = {
    "id": "ant://notes",
    "name": "Notes",
    "version": "1.2.3",
    "iconUri": "https://example.com/notes.png",
    "description": "Take notes",
    "components": [{"id": "ant://ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
}


def user_version(path: Path) -> int:
    """The database's schema version, read with plain sqlite3."""
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def integrity(path: Path) -> str:
    """`PRAGMA integrity_check` with plain sqlite3."""
    db = sqlite3.connect(path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def make_v1_database(state_dir: Path) -> Path:
    """A database as the first schema version left it, holding an app, a device and a setting."""
    path = state_dir / DATABASE_NAME
    db = sqlite3.connect(path)
    try:
        db.executescript(MIGRATIONS[0])
        db.execute(
            "INSERT INTO apps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("ant://notes", "Notes", "1.2.3", "Take notes", "https://example.com/notes.png",
             "file:///srv/notes.json", json.dumps(NOTES_MANIFEST), "2026-01-02T03:04:05Z"),
        )
        db.execute(
            "INSERT INTO devices (device_id, name, paired_at, last_seen, revoked) VALUES (?, ?, ?, ?, 0)",
            ("dev-1", "Phone", "2026-01-02T03:04:05Z", None),
        )
        db.execute("INSERT INTO settings VALUES ('server.address', 'https://osnova.lan:8443')")
        db.execute("PRAGMA user_version = 1")
        db.commit()
    finally:
        db.close()
    return path


async def test_a_v1_database_is_migrated_with_its_data_intact(state_dir: Path) -> None:
    path = make_v1_database(state_dir)
    assert user_version(path) == 1
    store = await Store.open(state_dir)
    try:
        assert await store.schema_version() == SCHEMA_VERSION == 3
        [app] = store.apps()
        assert (app.id, app.version, app.installed_at) == ("ant://notes", "1.2.3", "2026-01-02T03:04:05Z")
        assert app.manifest == NOTES_MANIFEST
        [device] = store.devices()
        assert (device.device_id, device.revoked, device.revoked_at) == ("dev-1", False, None)
        # Version 3: a device paired before roles existed is a member, paired by no one recorded.
        assert (device.role, device.paired_by) == (Role.MEMBER, None)
        assert await store.setting("server.address") == "https://osnova.lan:8443"
        # The tables and columns version 2 added work.
        await store.put_ban(BanRecord("192.0.2.1", 2e9, "test", "2026-01-02T03:04:05Z"))
        assert [ban.address for ban in await store.bans()] == ["192.0.2.1"]
        assert await store.revoke_device("dev-1", "2026-02-03T04:05:06Z") is True
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()
    assert user_version(path) == 3


async def test_a_migrated_database_serves_its_apps_and_settings(state_dir: Path) -> None:
    make_v1_database(state_dir)
    async with running_server(make_config(state_dir)) as running, running.client(admin=True) as client:
        [app] = await client.call("apps.list")
        assert (app["id"], app["components"]) == ("ant://notes", NOTES_MANIFEST["components"])
        assert await client.call("config.getServer") == "https://osnova.lan:8443"


def make_future_database(state_dir: Path) -> Path:
    """A database stamped with a schema version this build does not know."""
    path = state_dir / DATABASE_NAME
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE from_the_future (x)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
    finally:
        db.close()
    return path


async def test_a_newer_database_is_refused_with_a_clear_error(state_dir: Path) -> None:
    path = make_future_database(state_dir)
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this osnova-server knows \({SCHEMA_VERSION}\)"):
        await Store.open(state_dir)
    assert user_version(path) == SCHEMA_VERSION + 1


def test_serve_on_a_newer_database_exits_1_with_one_line(tmp_path: Path, state_dir: Path) -> None:
    path = make_future_database(state_dir)
    config_path = write_config(tmp_path / "server.toml", make_config(state_dir))
    result = cli("--config", str(config_path), "serve", timeout=30)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "newer than this osnova-server knows" in lines[0]
    assert "Traceback" not in result.stderr
    assert user_version(path) == SCHEMA_VERSION + 1


# -- durability --------------------------------------------------------------------------------


async def test_installs_answered_before_kill_9_survive_it(
    tmp_path: Path, state_dir: Path, server_process: Callable[..., ServerProcess]
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    uris = {}
    for number in range(INSTALLS):
        app_id = f"ant://app-{number:02d}"
        path = manifests / f"app-{number:02d}.json"
        path.write_text(json.dumps({**NOTES_MANIFEST, "id": app_id, "name": f"App {number}"}))
        uris[app_id] = path.as_uri()
    port = free_port()
    # CONCURRENCY fetches at once: within [limits] max_concurrent_fetches, and each install with
    # its own admin token, so none meets the limit of 2 fetches per caller.
    config = make_config(state_dir, server={"bind_address": f"127.0.0.1:{port}"},
                         limits={"max_concurrent_fetches": CONCURRENCY})
    config_path = write_config(tmp_path / "server.toml", config)
    url = f"http://127.0.0.1:{port}"
    authority = TokenAuthority(TEST_SECRET.encode(), 600)
    token = authority.issue(Scope.ADMIN, None)[0]
    headers = {"Authorization": f"Bearer {token}"}

    first = server_process(config_path)
    await asyncio.to_thread(first.wait_ready, url)
    answered: list[str] = []
    gate = asyncio.Semaphore(CONCURRENCY)

    async def install(session: aiohttp.ClientSession, app_id: str) -> None:
        async with gate:
            if first.process.poll() is not None:
                return
            body = {"jsonrpc": "2.0", "id": 1, "method": "apps.install", "params": [uris[app_id]]}
            own = {"Authorization": f"Bearer {authority.issue(Scope.ADMIN, None)[0]}"}
            async with session.post(f"{url}/rpc", json=body, headers=own) as answer:
                result: dict[str, Any] = await answer.json()
            assert result.get("result") == app_id, result
            answered.append(app_id)
            if len(answered) == KILL_AFTER:
                first.process.kill()  # SIGKILL with the next installs in flight

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        outcomes = await asyncio.gather(*(install(session, app_id) for app_id in uris), return_exceptions=True)
    first.process.wait(timeout=10)
    assert first.process.returncode == -9
    cut_off = [o for o in outcomes if isinstance(o, aiohttp.ClientError)]
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, aiohttp.ClientError)]
    assert not unexpected, unexpected
    assert len(answered) >= KILL_AFTER
    assert len(answered) < INSTALLS

    second = server_process(config_path)
    await asyncio.to_thread(second.wait_ready, url)
    async with aiohttp.ClientSession() as session:
        body = {"jsonrpc": "2.0", "id": 1, "method": "apps.list"}
        async with session.post(f"{url}/rpc", json=body, headers=headers) as answer:
            listed = {app["id"] for app in (await answer.json())["result"]}
    code, stderr = second.stop()
    assert code == 0, stderr
    assert set(answered) <= listed <= set(uris)
    assert integrity(state_dir / DATABASE_NAME) == "ok"
    # Requests cut off by the kill may or may not have committed; none may be half there.
    assert len(listed) - len(answered) <= CONCURRENCY
    assert cut_off, "the kill should have cut off installs in flight"


# -- rows that cannot be read, and a full disk --------------------------------------------------------


async def a_household(state_dir: Path) -> str:
    """Run a server once to leave an app and a device in the database; return the device id."""
    async with running_server(make_config(state_dir)) as server, server.client(admin=True) as admin:
        manifest = state_dir.parent / "notes.json"
        manifest.write_text(json.dumps(NOTES_MANIFEST))
        await admin.call("apps.install", {"manifest_uri": manifest.as_uri()})
        payload = await admin.call("pairing.start")
        async with server.client() as anonymous:
            grant = await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"]})
    return str(grant["device_id"])


def rows(path: Path) -> list[Any]:
    """Every row of the apps and devices tables, read with plain sqlite3."""
    with sqlite3.connect(path) as db:
        return [*db.execute("SELECT * FROM apps").fetchall(), *db.execute("SELECT * FROM devices").fetchall()]


CORRUPTIONS = [
    pytest.param("UPDATE apps SET manifest = '{not json'", "table apps with id 'ant://notes'", id="manifest-not-json"),
    pytest.param("UPDATE apps SET manifest = '[1, 2]'", "the stored manifest is not a JSON object", id="manifest-array"),
    pytest.param("UPDATE devices SET role = 'superuser'", "'superuser' is not a valid Role", id="unknown-role"),
]


@pytest.mark.parametrize(("corruption", "named"), CORRUPTIONS)
def test_serve_on_a_row_it_cannot_read_exits_1_with_one_line(
    tmp_path: Path, state_dir: Path, corruption: str, named: str,
) -> None:
    asyncio.run(a_household(state_dir))
    path = state_dir / DATABASE_NAME
    with sqlite3.connect(path) as db:
        db.execute(corruption)
    before = rows(path)
    config_path = write_config(tmp_path / "server.toml", make_config(state_dir))
    result = cli("--config", str(config_path), "serve", timeout=30)  # a hang fails here
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"osnova-server: database {path}: the row of table ")
    assert named in lines[0] and "cannot be read" in lines[0] and "osnova-server restore" in lines[0]
    assert "Traceback" not in result.stderr
    assert rows(path) == before


def test_serve_on_a_database_file_that_is_not_sqlite_exits_1_with_one_line(tmp_path: Path, state_dir: Path) -> None:
    path = state_dir / DATABASE_NAME
    garbage = b"this is not an SQLite database, only bytes " * 100
    path.write_bytes(garbage)
    config_path = write_config(tmp_path / "server.toml", make_config(state_dir))
    result = cli("--config", str(config_path), "serve", timeout=30)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"osnova-server: cannot open database {path}: file is not a database")
    assert "osnova-server restore" in lines[0]
    assert path.read_bytes() == garbage


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (needs root); unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in `directory` until its filesystem is full; return the file."""
    filler = directory / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


async def test_a_full_disk_is_logged_as_such_answered_32603_and_the_server_goes_on(
    small_disk: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    state = small_disk / "state"
    async with running_server(make_config(state)) as server, server.client(admin=True) as admin:
        first = await pair_device(server)
        code = (await admin.call("pairing.start"))["pairing"]["code"]
        filler = fill(small_disk)
        with caplog.at_level(logging.DEBUG, logger="osnova_server"):
            async with server.client() as anonymous:
                with pytest.raises(RpcCallError) as paired:
                    await anonymous.call("pairing.complete", {"token": code, "device_name": "tablet"})
                with pytest.raises(RpcCallError) as refreshed:
                    await anonymous.call("auth.refresh", {"refresh_token": first["refresh_token"]})
        for refused in (paired.value, refreshed.value):
            assert refused.code == INTERNAL_ERROR
            assert refused.message == "Internal error: the server's disk is full, so nothing was changed; try again later"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and all(message.startswith("disk full: could not write to ") for message in errors), errors
        assert "Traceback" not in caplog.text and "cannot rollback" not in "\n".join(errors)
        assert [d.name for d in server.runtime.store.devices()] == [first_name(server, first)]
        # Space again: the same code and the same refresh token work, as if nothing had happened.
        filler.unlink()
        async with server.client() as anonymous:
            grant = await anonymous.call("pairing.complete", {"token": code, "device_name": "tablet"})
            renewed = await anonymous.call("auth.refresh", {"refresh_token": first["refresh_token"]})
        assert renewed["device_id"] == first["device_id"]
        assert server.runtime.store.device(grant["device_id"]) is not None


def first_name(server: RunningServer, grant: dict[str, Any]) -> str:
    """The stored name of the device of `grant`."""
    device = server.runtime.store.device(grant["device_id"])
    assert device is not None
    return device.name
