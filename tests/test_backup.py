"""`backup` and `restore` as a user runs them: real servers, real tar files, real SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from osnova_server import __version__
from osnova_server import config as config_module
from osnova_server.backup import MANIFEST_NAME
from osnova_server.client import OsnovaClient
from osnova_server.config import Config
from osnova_server.statelock import LOCK_NAME
from osnova_server.store import DATABASE_NAME, SCHEMA_VERSION
from tests.conftest import ServerProcess, cli, free_port, make_config, running_server, write_config
from tests.test_apps import manifest

Start = Callable[..., ServerProcess]


def _setup(tmp_path: Path) -> tuple[Config, Path]:
    """A config on a free loopback port with its state in tmp/state, written to tmp/server.toml."""
    config = make_config(tmp_path / "state")
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{free_port()}")
    return config, write_config(tmp_path / "server.toml", config)


async def _run(*args: str) -> Any:
    """The CLI in a child process, without blocking the loop a test server runs on."""
    return await asyncio.to_thread(cli, *args)


def _tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (name -> bytes) but the lock's PID record, which a refused
    restore rewrites with its own PID while it holds the lock to look."""
    if not directory.exists():
        return {}
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*")) if path.is_file() and path.name != LOCK_NAME
    }


def _siblings(tmp_path: Path) -> list[str]:
    """Names beside the state dir (pre-restore copies and staging dirs would show here)."""
    return sorted(path.name for path in tmp_path.iterdir())


async def _populated_backup(tmp_path: Path, config: Config, path: Path) -> Path:
    """Start a server, install an app, and back it up while it serves; return the backup."""
    (tmp_path / "notes.json").write_text(json.dumps(manifest()))
    async with running_server(config) as running, running.client(admin=True) as admin:
        await admin.call("apps.install", {"manifest_uri": (tmp_path / "notes.json").as_uri()})
        result = await _run("--config", str(path), "backup", "--output", str(tmp_path / "backup.tar"))
    assert result.returncode == 0, result.stderr
    return tmp_path / "backup.tar"


def _members(archive: Path) -> dict[str, bytes]:
    """The archive's members by name."""
    with tarfile.open(archive) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar if info.isfile()}  # type: ignore[union-attr]


def _rewrite(archive: Path, members: dict[str, bytes]) -> None:
    """Write `members` as the archive, MANIFEST.json first, as `backup` lays it out."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# -- the whole round trip -----------------------------------------------------------------------


async def test_the_round_trip_serves_the_same_apps_devices_and_address(tmp_path: Path, server_process: Start) -> None:
    config, path = _setup(tmp_path)
    for app_id in ("ant://notes", "ant://photos"):
        name = app_id.removeprefix("ant://")
        (tmp_path / f"{name}.json").write_text(json.dumps(manifest(id=app_id, name=name.title())))
    url = f"http://127.0.0.1:{config.port}"

    first = server_process(path)
    first.wait_ready(url)
    token = await asyncio.to_thread(lambda: cli("--config", str(path), "token").stdout.strip())
    async with OsnovaClient(url, token) as admin, OsnovaClient(url) as anonymous:
        payload = await admin.call("pairing.start", {"name": "phone"})
        grant = await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"]})
        for name in ("notes", "photos"):
            await admin.call("apps.install", {"manifest_uri": (tmp_path / f"{name}.json").as_uri()})
        await admin.call("config.setServer", {"address": "https://osnova.lan:8443"})
        apps_before = await admin.call("apps.list")
        devices_before = await admin.call("devices.list")
        backup = await _run("--config", str(path), "backup", "--output", str(tmp_path / "home.tar"))
        assert backup.returncode == 0, backup.stderr
        assert backup.stdout.strip() == str(tmp_path / "home.tar")
        assert await admin.call("status.get")  # still serving after the backup
    code, _ = first.stop()
    assert code == 0
    assert (tmp_path / "home.tar").stat().st_mode & 0o777 == 0o600

    shutil.rmtree(tmp_path / "state")
    restored = cli("--config", str(path), "restore", str(tmp_path / "home.tar"))
    assert restored.returncode == 0, restored.stderr
    assert f"into {tmp_path / 'state'}" in restored.stdout
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700

    second = server_process(path)
    second.wait_ready(url)
    async with OsnovaClient(url, token) as admin, OsnovaClient(url) as anonymous:
        assert await admin.call("apps.list") == apps_before
        assert [d["device_id"] for d in await admin.call("devices.list")] == [grant["device_id"]]
        assert (await admin.call("devices.list"))[0]["name"] == devices_before[0]["name"] == "phone"
        assert await admin.call("config.getServer") == "https://osnova.lan:8443"
        refreshed = await anonymous.call("auth.refresh", {"refresh_token": grant["refresh_token"]})
        assert refreshed["device_id"] == grant["device_id"]
    async with OsnovaClient(url, refreshed["access_token"]) as device:
        assert [app["id"] for app in await device.call("apps.list")] == ["ant://notes", "ant://photos"]
    second.stop()


async def test_the_backup_holds_a_manifest_with_every_checksum(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    members = _members(archive)
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == MANIFEST_NAME
    manifest_json = json.loads(members.pop(MANIFEST_NAME))
    assert manifest_json["version"] == __version__
    assert manifest_json["schema_version"] == SCHEMA_VERSION
    listed = {m["name"]: m for m in manifest_json["members"]}
    assert set(listed) == set(members)
    assert {"state/osnova.db", "state/identity.pem", "state/identity.json", "config/server.toml"} <= set(members)
    assert f"state/{LOCK_NAME}" not in members
    for name, data in members.items():
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert listed[name]["size"] == len(data)
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(members["state/osnova.db"])
    db = sqlite3.connect(snapshot)
    try:
        assert [row[0] for row in db.execute("SELECT id FROM apps")] == ["ant://notes"]
    finally:
        db.close()


def test_backup_without_a_server_works_too(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    asyncio.run(_start_and_stop(config))
    result = cli("--config", str(path), "backup", "--output", str(tmp_path / "cold.tar"))
    assert result.returncode == 0, result.stderr
    assert "state/osnova.db" in _members(tmp_path / "cold.tar")


async def _start_and_stop(config: Config) -> None:
    """Create the state by running a server once."""
    async with running_server(config):
        pass


def test_backup_writes_the_default_name_in_the_current_directory(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    asyncio.run(_start_and_stop(config))
    here = tmp_path / "here"
    here.mkdir()
    result = cli_in(here, "--config", str(path), "backup")
    assert result.returncode == 0, result.stderr
    [written] = list(here.iterdir())
    assert written.name.startswith("osnova-backup-") and written.suffix == ".tar"
    assert result.stdout.strip() == str(written)


def cli_in(directory: Path, *args: str) -> Any:
    """The CLI run from `directory`."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "osnova_server", *args], capture_output=True, text=True,
                          timeout=30, cwd=directory)


def test_backup_to_an_existing_file_is_refused_without_force(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    asyncio.run(_start_and_stop(config))
    existing = tmp_path / "backup.tar"
    existing.write_bytes(b"an older backup")

    refused = cli("--config", str(path), "backup", "--output", str(existing))
    assert refused.returncode == 1
    assert refused.stderr == f"osnova-server: {existing} already exists; pass --force to overwrite it or choose another --output\n"
    assert existing.read_bytes() == b"an older backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.tar", "server.toml", "state"]  # no leftovers

    forced = cli("--config", str(path), "backup", "--output", str(existing), "--force")
    assert forced.returncode == 0, forced.stderr
    assert MANIFEST_NAME in _members(existing)
    assert existing.stat().st_mode & 0o777 == 0o600


def test_backup_of_a_state_dir_without_database_says_so(tmp_path: Path) -> None:
    _, path = _setup(tmp_path)
    result = cli("--config", str(path), "backup", "--output", str(tmp_path / "b.tar"))
    assert result.returncode == 1
    assert "nothing to back up" in result.stderr and str(tmp_path / "state") in result.stderr
    assert not (tmp_path / "b.tar").exists()


def test_backup_of_a_state_file_this_user_cannot_read_names_that_file(tmp_path: Path) -> None:
    """Not "cannot write the backup ... check the directory": the output is fine, the state is not readable."""
    import subprocess
    import sys

    config, path = _setup(tmp_path)
    asyncio.run(_start_and_stop(config))
    unreadable = tmp_path / "state" / "identity.pem"
    unreadable.chmod(0)
    # Root reads anything; without its capabilities it obeys file modes like the wrong user would.
    prefix = ["setpriv", "--bounding-set=-all"] if os.geteuid() == 0 else []
    result = subprocess.run([*prefix, sys.executable, "-m", "osnova_server", "--config", str(path), "backup",
                             "--output", str(tmp_path / "b.tar")], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"osnova-server: cannot read {unreadable} (Permission denied); run this as the server's user\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.toml", "state"]  # no leftovers


# -- what restore refuses, and that nothing changed ---------------------------------------------


async def test_restore_while_a_server_runs_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    async with running_server(config):
        before, around = _tree(tmp_path / "state"), _siblings(tmp_path)
        refused = await _run("--config", str(path), "restore", str(archive), "--force")
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1
        assert f"is in use by another osnova-server (PID {os.getpid()})" in refused.stderr
        assert _tree(tmp_path / "state") == before
        assert _siblings(tmp_path) == around


@pytest.mark.parametrize("member", ["state/osnova.db", "state/identity.pem", "config/server.toml"])
async def test_a_backup_with_one_flipped_byte_is_refused_naming_the_member(tmp_path: Path, member: str) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    with tarfile.open(archive) as tar:
        info = tar.getmember(member)
    data = bytearray(archive.read_bytes())
    data[info.offset_data + info.size // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    shutil.rmtree(tmp_path / "state")
    around = _siblings(tmp_path)

    refused = cli("--config", str(path), "restore", str(archive))
    assert refused.returncode == 1
    assert refused.stderr == (
        f"osnova-server: {archive}: member {member} does not match its checksum in MANIFEST.json; "
        "the backup is damaged, use another one\n"
    )
    assert _siblings(tmp_path) == around  # no state dir, no staging left behind


async def test_a_backup_from_a_newer_schema_exits_2_naming_the_version_needed(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    members = _members(archive)
    database = tmp_path / "future.db"
    database.write_bytes(members["state/osnova.db"])
    db = sqlite3.connect(database)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    members["state/osnova.db"] = database.read_bytes()
    future = json.loads(members[MANIFEST_NAME])
    future["version"], future["schema_version"] = "9.9.9", SCHEMA_VERSION + 1
    for entry in future["members"]:
        entry["sha256"] = hashlib.sha256(members[entry["name"]]).hexdigest()
        entry["size"] = len(members[entry["name"]])
    members[MANIFEST_NAME] = json.dumps(future).encode()
    _rewrite(archive, members)
    before, around = _tree(tmp_path / "state"), _siblings(tmp_path)

    refused = cli("--config", str(path), "restore", str(archive), "--force")
    assert refused.returncode == 2
    assert refused.stderr == (
        f"osnova-server: {archive} was made by osnova-server 9.9.9 with database schema version "
        f"{SCHEMA_VERSION + 1}; this is osnova-server {__version__}, which knows schema versions up to "
        f"{SCHEMA_VERSION}: install osnova-server 9.9.9 or newer to restore it\n"
    )
    assert _tree(tmp_path / "state") == before
    assert _siblings(tmp_path) == around


async def test_a_database_failing_the_integrity_check_is_refused(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    members = _members(archive)
    garbage = bytearray(members["state/osnova.db"])
    garbage[4096:8192] = b"\xff" * 4096  # the second page, with a checksum made to match
    members["state/osnova.db"] = bytes(garbage)
    listing = json.loads(members[MANIFEST_NAME])
    for entry in listing["members"]:
        entry["sha256"] = hashlib.sha256(members[entry["name"]]).hexdigest()
    members[MANIFEST_NAME] = json.dumps(listing).encode()
    _rewrite(archive, members)
    shutil.rmtree(tmp_path / "state")

    refused = cli("--config", str(path), "restore", str(archive))
    assert refused.returncode == 1
    assert f"{archive}: the database in it" in refused.stderr
    assert "use another backup" in refused.stderr
    assert not (tmp_path / "state").exists()


async def test_restore_over_a_database_needs_force_and_keeps_the_old_state(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    async with running_server(config) as running, running.client(admin=True) as admin:
        await admin.call("apps.uninstall", {"app_id": "ant://notes"})  # a change after the backup
    before = _tree(tmp_path / "state")

    refused = cli("--config", str(path), "restore", str(archive))
    assert refused.returncode == 1
    assert "already holds a database; pass --force to replace it" in refused.stderr
    assert _tree(tmp_path / "state") == before

    forced = cli("--config", str(path), "restore", str(archive), "--force")
    assert forced.returncode == 0, forced.stderr
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("state.pre-restore-")]
    assert f"the previous state is in {aside}" in forced.stdout
    assert _tree(aside) == before
    async with running_server(config) as running, running.client(admin=True) as admin:
        assert [app["id"] for app in await admin.call("apps.list")] == ["ant://notes"]


async def test_restore_into_a_missing_state_dir_creates_it_0700(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    elsewhere = tmp_path / "new" / "home" / "state"
    moved = write_config(tmp_path / "moved.toml", config_module.replace(config, "server", state_dir=str(elsewhere)))

    result = cli("--config", str(moved), "restore", str(archive))
    assert result.returncode == 0, result.stderr
    assert elsewhere.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert (elsewhere / "identity.pem").read_bytes() == (tmp_path / "state" / "identity.pem").read_bytes()
    assert "kept the config" in result.stdout  # moved.toml differs from the backup's server.toml
    async with running_server(config_module.load(moved)) as running, running.client(admin=True) as admin:
        assert [app["id"] for app in await admin.call("apps.list")] == ["ant://notes"]


async def test_restore_with_a_missing_config_file_puts_the_backups_back(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    original = path.read_bytes()
    path.unlink()
    shutil.rmtree(tmp_path / "state")

    result = cli("--config", str(path), "restore", str(archive))
    assert result.returncode == 0, result.stderr
    assert f"wrote the config {path}" in result.stdout
    assert path.read_bytes() == original
    assert (tmp_path / "state" / DATABASE_NAME).is_file()


def test_restore_of_something_that_is_not_a_backup(tmp_path: Path) -> None:
    _, path = _setup(tmp_path)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    refused = cli("--config", str(path), "restore", str(junk))
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"osnova-server: {junk} is not a readable osnova-server backup")
    missing = cli("--config", str(path), "restore", str(tmp_path / "nope.tar"))
    assert missing.returncode == 1
    assert missing.stderr == f"osnova-server: backup {tmp_path / 'nope.tar'} not found\n"


async def test_a_secret_file_outside_the_state_dir_goes_back_to_its_place(tmp_path: Path) -> None:
    secret = tmp_path / "etc" / "jwt.secret"
    config = make_config(tmp_path / "state", auth={"jwt_secret": "", "jwt_secret_file": str(secret)})
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{free_port()}")
    path = write_config(tmp_path / "server.toml", config)
    archive = await _populated_backup(tmp_path, config_module.load(path), path)
    assert "secret/jwt.secret" in _members(archive)
    original = secret.read_bytes()
    secret.write_text("f" * 64 + "\n")  # replaced since the backup
    shutil.rmtree(tmp_path / "state")

    result = cli("--config", str(path), "restore", str(archive))

    assert result.returncode == 0, result.stderr
    assert f"wrote the JWT secret file {secret}" in result.stdout
    assert secret.read_bytes() == original
    assert secret.stat().st_mode & 0o777 == 0o600
    [aside] = [p for p in secret.parent.iterdir() if p.name.startswith("jwt.secret.pre-restore-")]
    assert aside.read_text() == "f" * 64 + "\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")
async def test_a_restore_by_root_gives_the_files_to_the_state_dirs_owner(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    archive = await _populated_backup(tmp_path, config, path)
    owner = 4321  # the server's user, as systemd's User= would make it
    for item in [tmp_path / "state", *(tmp_path / "state").rglob("*")]:
        os.chown(item, owner, owner)

    result = cli("--config", str(path), "restore", str(archive), "--force")

    assert result.returncode == 0, result.stderr
    restored = [tmp_path / "state", *(tmp_path / "state").rglob("*")]
    assert {(item.stat().st_uid, item.stat().st_gid) for item in restored} == {(owner, owner)}


async def test_a_backup_written_into_the_state_dir_does_not_hold_itself(tmp_path: Path) -> None:
    config, path = _setup(tmp_path)
    await _populated_backup(tmp_path, config, path)
    inside = tmp_path / "state" / "in-state.tar"
    result = cli("--config", str(path), "backup", "--output", str(inside))
    assert result.returncode == 0, result.stderr
    names = set(_members(inside))
    assert "state/osnova.db" in names
    assert not any(name.startswith(("state/in-state", "state/.osnova-backup-")) for name in names), names
