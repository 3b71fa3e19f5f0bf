"""Backups of the whole state in one tar file, and putting one back.

The archive (an uncompressed POSIX tar, mode 0600) holds `MANIFEST.json` first, then
`state/...` (every regular file of the state dir, the database as an online-backup snapshot),
`secret/NAME` when the JWT secret file lives outside the state dir, and `config/server.toml`
when the server runs from a config file. The manifest records the osnova-server version, the
database's schema version and the SHA-256 and size of every member, so a restore can refuse a
damaged or too-new backup before it changes anything.

Restoring builds the new state dir beside the old one, checks it whole (checksums, then
SQLite's `integrity_check`), and only then swaps it in with two renames: the old state is moved
aside to `<state_dir>.pre-restore-<timestamp>`, never deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from osnova_server import __version__
from osnova_server.files import fsync_directory, make_private_dirs, replace_file
from osnova_server.snapshot import BACKUPS_DIR, file_stamp, snapshot_database
from osnova_server.statelock import LOCK_NAME, StateLock
from osnova_server.store import DATABASE_NAME, SCHEMA_VERSION
from osnova_server.timestamps import rfc3339

MANIFEST_NAME: Final = "MANIFEST.json"
FORMAT: Final = "osnova-server backup"
FORMAT_VERSION: Final = 1
STATE_PREFIX: Final = "state/"
SECRET_PREFIX: Final = "secret/"
CONFIG_MEMBER: Final = "config/server.toml"
ARCHIVE_MODE: Final = 0o600
_CHUNK: Final = 1 << 20
# Never copied from the state dir: the live database (snapshotted instead), the lock, the copies
# kept before migrations (they would make every backup grow by three databases).
_SKIPPED_NAMES: Final = frozenset({
    DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm", f"{DATABASE_NAME}-journal", LOCK_NAME,
})


class BackupError(Exception):
    """A backup cannot be written or read; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class StatePaths:
    """Where one installation keeps what a backup holds."""

    state_dir: Path
    secret_file: Path
    config_file: Path | None


@dataclass(slots=True)
class BackupReport:
    """What `write_backup` put in the archive."""

    path: Path
    schema_version: int
    members: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RestoreReport:
    """What `restore_backup` did, for the lines the CLI prints."""

    manifest: dict[str, Any]
    state_dir: Path
    moved_aside: Path | None = None
    secret_written: Path | None = None
    config_written: Path | None = None
    config_kept: Path | None = None
    config_from_backup: Path | None = None


# -- writing -----------------------------------------------------------------------------------


def default_backup_name() -> str:
    """`osnova-backup-20261202T020500Z.tar`, in the current directory."""
    return f"osnova-backup-{file_stamp()}.tar"


def write_backup(paths: StatePaths, output: Path, force: bool = False) -> BackupReport:
    """Write a backup of the state to `output`; refuse an existing file unless `force`."""
    if (output.exists() or output.is_symlink()) and not force:
        raise BackupError(f"{output} already exists; pass --force to overwrite it or choose another --output")
    if not (paths.state_dir / DATABASE_NAME).is_file():
        raise BackupError(
            f"no database in {paths.state_dir}; nothing to back up (has the server ever started there?)"
        )
    output = output.absolute()
    work = Path(tempfile.mkdtemp(prefix=".osnova-backup-", dir=output.parent))
    try:
        snapshot = work / DATABASE_NAME
        schema_version = snapshot_database(paths.state_dir / DATABASE_NAME, snapshot)
        # A backup written into the state dir must not hold itself or its own work files.
        members = list(_members(paths, snapshot, leave_out={output, work}))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": __version__,
            "schema_version": schema_version,
            "created_at": rfc3339(),
            "state_dir": str(paths.state_dir),
            "secret_file": str(paths.secret_file),
            "config_file": str(paths.config_file) if paths.config_file else None,
            "members": [{"name": name, "size": source.stat().st_size, "sha256": _sha256(source)}
                        for name, source in members],
        }
        partial = work / "archive.tar"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, ARCHIVE_MODE)
        with os.fdopen(fd, "wb") as stream:
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
                body = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
                tar.addfile(_member_info(MANIFEST_NAME, len(body)), io.BytesIO(body))
                for name, source in members:
                    with source.open("rb") as data:
                        tar.addfile(_member_info(name, source.stat().st_size), data)
            stream.flush()
            os.fsync(stream.fileno())
        if force:
            os.replace(partial, output)
        else:
            try:
                os.link(partial, output)  # refuses a file that appeared meanwhile
            except FileExistsError:
                raise BackupError(f"{output} already exists; pass --force to overwrite it") from None
        fsync_directory(output.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BackupReport(output, schema_version, [MANIFEST_NAME, *(name for name, _ in members)])


def _members(paths: StatePaths, snapshot: Path, leave_out: set[Path]) -> Iterator[tuple[str, Path]]:
    """(archive name, file to read) for everything a backup holds, but the paths in `leave_out`."""
    yield f"{STATE_PREFIX}{DATABASE_NAME}", snapshot
    state_dir = paths.state_dir
    for directory, subdirs, files in os.walk(state_dir):
        here = Path(directory)
        subdirs[:] = sorted(
            d for d in subdirs if here / d not in leave_out and not (here == state_dir and d == BACKUPS_DIR)
        )
        for name in sorted(files):
            path = here / name
            if path in leave_out or (here == state_dir and name in _SKIPPED_NAMES):
                continue
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # a durable write in progress (files.py); the file it becomes is taken
            if path.is_symlink() or not path.is_file():
                continue
            yield STATE_PREFIX + path.relative_to(state_dir).as_posix(), path
    secret = paths.secret_file
    if secret.is_file() and not _inside(secret, state_dir):
        yield f"{SECRET_PREFIX}{secret.name}", secret
    if paths.config_file is not None and paths.config_file.is_file():
        yield CONFIG_MEMBER, paths.config_file


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """A private regular-file header that records no owner."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = ARCHIVE_MODE
    info.mtime = int(time.time())  # members are dated when the backup was taken
    return info


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(path: Path, directory: Path) -> bool:
    """Whether `path` lies inside `directory`."""
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


# -- reading and checking ----------------------------------------------------------------------


def read_manifest(archive: Path) -> dict[str, Any]:
    """The archive's manifest, checked for shape and for a schema this version can open."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isfile():
                raise BackupError(f"{archive} is not an osnova-server backup (no {MANIFEST_NAME} at its start)")
            stream = tar.extractfile(first)
            assert stream is not None
            manifest = json.loads(stream.read().decode("utf-8"))
    except FileNotFoundError:
        raise BackupError(f"backup {archive} not found") from None
    except (tarfile.TarError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BackupError(f"{archive} is not a readable osnova-server backup ({err})") from None
    except OSError as err:
        raise BackupError(f"cannot read backup {archive} ({err.strerror})") from None
    _check_manifest(archive, manifest)
    checked: dict[str, Any] = manifest
    return checked


def _check_manifest(archive: Path, manifest: Any) -> None:
    """Refuse manifests this version cannot trust or use."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} is not an osnova-server backup ({MANIFEST_NAME} is not one)")
    schema = manifest.get("schema_version")
    made_by = manifest.get("version", "an unknown version")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise BackupError(f"{archive}: {MANIFEST_NAME} has no schema version; the backup is damaged")
    if schema > SCHEMA_VERSION or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BackupError(
            f"{archive} was made by osnova-server {made_by} with database schema version {schema}; "
            f"this is osnova-server {__version__}, which knows schema versions up to {SCHEMA_VERSION}: "
            f"install osnova-server {made_by} or newer to restore it",
            exit_code=2,
        )
    members = manifest.get("members")
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("sha256"), str)
        and isinstance(m.get("size"), int) for m in members
    ):
        raise BackupError(f"{archive}: {MANIFEST_NAME} does not list its members; the backup is damaged")
    names = [m["name"] for m in members]
    if f"{STATE_PREFIX}{DATABASE_NAME}" not in names or len(set(names)) != len(names):
        raise BackupError(f"{archive}: {MANIFEST_NAME} lists no database or a member twice; the backup is damaged")
    for name in names:
        _check_name(archive, name)


def _check_name(archive: Path, name: str) -> None:
    """Refuse member names that could land outside their place (absolute, `..`, odd prefixes)."""
    pure = PurePosixPath(name)
    allowed = name == CONFIG_MEMBER or (
        name.startswith((STATE_PREFIX, SECRET_PREFIX)) and len(pure.parts) >= 2
        and (not name.startswith(SECRET_PREFIX) or len(pure.parts) == 2)
    )
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not allowed:
        raise BackupError(f"{archive}: member {name!r} has a name a backup never holds; the backup is damaged")


def read_member(archive: Path, manifest: dict[str, Any], name: str) -> bytes | None:
    """One small member's bytes, checked against the manifest; None when the backup has none."""
    entry = next((m for m in manifest["members"] if m["name"] == name), None)
    if entry is None:
        return None
    try:
        with tarfile.open(archive, mode="r:") as tar:
            stream = tar.extractfile(name)
            data = stream.read() if stream is not None else b""
    except (KeyError, tarfile.TarError) as err:
        raise BackupError(f"{archive}: member {name} cannot be read ({err}); the backup is damaged") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise BackupError(
            f"{archive}: member {name} does not match its checksum in {MANIFEST_NAME}; "
            "the backup is damaged, use another one"
        )
    return data


def extract_checked(archive: Path, manifest: dict[str, Any], into: Path) -> dict[str, Path]:
    """Extract every member listed in the manifest into `into`, checking size and SHA-256.

    Returns archive name -> extracted file. The first mismatch is refused naming its member.
    """
    expected = {m["name"]: m for m in manifest["members"]}
    extracted: dict[str, Path] = {}
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for info in tar:
                if info.name == MANIFEST_NAME:
                    continue
                entry = expected.get(info.name)
                if entry is None or not info.isfile():
                    raise BackupError(f"{archive}: member {info.name!r} is not in {MANIFEST_NAME}; the backup is damaged")
                if info.name in extracted:
                    raise BackupError(f"{archive}: member {info.name!r} appears twice; the backup is damaged")
                target = into / info.name
                make_private_dirs(target.parent)
                source = tar.extractfile(info)
                assert source is not None
                digest, size = _copy_hashing(source, target)
                if digest != entry["sha256"] or size != entry["size"]:
                    raise BackupError(
                        f"{archive}: member {info.name} does not match its checksum in {MANIFEST_NAME}; "
                        "the backup is damaged, use another one"
                    )
                extracted[info.name] = target
    except tarfile.TarError as err:
        raise BackupError(f"{archive} is damaged ({err}); use another backup") from None
    missing = sorted(set(expected) - set(extracted))
    if missing:
        raise BackupError(f"{archive}: member {missing[0]} listed in {MANIFEST_NAME} is missing; the backup is damaged")
    return extracted


def _copy_hashing(source: IO[bytes], target: Path) -> tuple[str, int]:
    """Copy a member's bytes into a new private file; return their SHA-256 and length."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, ARCHIVE_MODE)
    with os.fdopen(fd, "wb") as stream:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
            stream.write(chunk)
        stream.flush()
        os.fsync(stream.fileno())
    return digest.hexdigest(), size


def check_database(archive: Path, database: Path, manifest: dict[str, Any]) -> None:
    """`PRAGMA integrity_check` and the schema version of the restored database."""
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            verdict = [row[0] for row in db.execute("PRAGMA integrity_check")]
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error as err:
        raise BackupError(f"{archive}: the database in it cannot be opened ({err}); use another backup") from None
    if verdict != ["ok"]:
        raise BackupError(
            f"{archive}: the database in it fails SQLite's integrity check ({verdict[0]}); use another backup"
        )
    if version != manifest["schema_version"]:
        raise BackupError(
            f"{archive}: the database has schema version {version}, the manifest says "
            f"{manifest['schema_version']}; the backup is damaged"
        )


# -- restoring ---------------------------------------------------------------------------------


def restore_backup(archive: Path, paths: StatePaths, force: bool = False) -> RestoreReport:
    """Put the backup at `archive` in place of the state `paths` name; see the module docstring."""
    manifest = read_manifest(archive)
    state_dir = paths.state_dir
    holder: StateLock | None = None
    if state_dir.is_dir():
        holder = StateLock.acquire(state_dir, "restore")  # StateDirBusy while a server uses it
    try:
        if holder is not None and (state_dir / DATABASE_NAME).exists() and not force:
            raise BackupError(
                f"{state_dir} already holds a database; pass --force to replace it (the current state "
                f"is kept in {state_dir}.pre-restore-<timestamp>)"
            )
        make_private_dirs(state_dir.parent)
        stamp = file_stamp()
        staging = state_dir.with_name(f".{state_dir.name}.restoring-{stamp}")
        staging.mkdir(mode=0o700)
        os.chmod(staging, 0o700)
        try:
            with StateLock.acquire(staging, "restore"):  # the lock of the state dir-to-be, until it is in place
                report = _swap_in(archive, manifest, paths, staging, stamp, holder is not None)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if holder is not None:
            holder.release()
    return report


def _swap_in(
    archive: Path, manifest: dict[str, Any], paths: StatePaths, staging: Path, stamp: str, exists: bool
) -> RestoreReport:
    """Fill `staging`, check it, then move the old state aside and the new one in."""
    unpacked = staging / ".unpacked"
    unpacked.mkdir(mode=0o700)
    extracted = extract_checked(archive, manifest, unpacked)
    check_database(archive, extracted[f"{STATE_PREFIX}{DATABASE_NAME}"], manifest)
    for name, path in extracted.items():
        if name.startswith(STATE_PREFIX):
            target = staging / name[len(STATE_PREFIX):]
            make_private_dirs(target.parent)
            os.replace(path, target)
    state_dir = paths.state_dir
    report = RestoreReport(manifest, state_dir)
    # Small files, read now: `unpacked` moves with the staging dir below.
    secret = next((path.read_bytes() for name, path in extracted.items() if name.startswith(SECRET_PREFIX)), None)
    config = extracted[CONFIG_MEMBER].read_bytes() if CONFIG_MEMBER in extracted else None
    if exists and os.geteuid() == 0:
        _hand_over(staging, state_dir.stat())
    if exists:
        aside = state_dir.with_name(f"{state_dir.name}.pre-restore-{stamp}")
        os.rename(state_dir, aside)
        report.moved_aside = aside
    try:
        os.rename(staging, state_dir)
    except OSError as err:
        if report.moved_aside is not None:
            os.rename(report.moved_aside, state_dir)
        raise BackupError(
            f"cannot put the restored state in {state_dir} ({err.strerror}); did a server start "
            "there meanwhile? Nothing was changed"
        ) from None
    fsync_directory(state_dir.parent)
    shutil.rmtree(state_dir / ".unpacked", ignore_errors=True)
    if secret is not None:
        report.secret_written = _put_beside(secret, paths.secret_file, stamp)
    if config is not None:
        _restore_config(config, paths.config_file, stamp, report)
    return report


def _hand_over(directory: Path, owner: os.stat_result) -> None:
    """Give a tree restored by root to the user who owned the state dir it replaces (the server's)."""
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _put_beside(data: bytes, target: Path, stamp: str) -> Path:
    """Write `data` to `target` (0600); a different file there is moved aside first."""
    if target.exists() and target.read_bytes() != data:
        os.rename(target, target.with_name(f"{target.name}.pre-restore-{stamp}"))
    make_private_dirs(target.parent)
    replace_file(target, data, 0o600)
    return target


def _restore_config(data: bytes, config_file: Path | None, stamp: str, report: RestoreReport) -> None:
    """Write the backup's config where none is; keep an existing one, with the backup's beside it."""
    if config_file is None:
        return
    if not config_file.exists():
        make_private_dirs(config_file.parent)
        replace_file(config_file, data, 0o600)
        report.config_written = config_file
    elif config_file.read_bytes() != data:
        beside = config_file.with_name(f"{config_file.name}.from-backup-{stamp}")
        replace_file(beside, data, 0o600)
        report.config_kept = config_file
        report.config_from_backup = beside
