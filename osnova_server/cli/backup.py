"""`backup` and `restore`: the whole state in one file, and back again."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osnova_server.cli.common import EXIT_OK, EXIT_USAGE, PROG, CommandError, load_config

if TYPE_CHECKING:
    from osnova_server.backup import StatePaths
    from osnova_server.config import Config


def state_paths(config: Config) -> StatePaths:
    """What a backup of `config`'s installation holds, and where it goes back to."""
    from osnova_server.backup import StatePaths

    source = config.source.absolute() if config.source is not None else None
    return StatePaths(config.state_dir.absolute(), config.secret_file.absolute(), source)


def cmd_backup(args: argparse.Namespace) -> int:
    """Write a consistent backup of the state, safe while the server runs; print its path."""
    from osnova_server.backup import BackupError, default_backup_name, write_backup
    from osnova_server.snapshot import SnapshotError

    config = load_config(args)
    output = Path(args.output) if args.output else Path.cwd() / default_backup_name()
    try:
        report = write_backup(state_paths(config), output, force=args.force)
    except BackupError as err:
        raise CommandError(str(err), err.exit_code) from None
    except SnapshotError as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        culprit = Path(err.filename) if isinstance(err.filename, str) else None
        # Writing touches only the output and write_backup's work dir beside it; any other file named is a source.
        if culprit is not None and culprit != output.absolute() and not any(
            part.startswith(".osnova-backup-") for part in culprit.parts
        ):
            raise CommandError(f"cannot read {culprit} ({err.strerror}); run this as the server's user") from None
        raise CommandError(
            f"cannot write the backup {output} ({err.strerror}); check the directory and free space"
        ) from None
    print(report.path)
    return EXIT_OK


def _restore_config(args: argparse.Namespace, archive: Path) -> Config:
    """The config to restore with: the named file's, or the backup's when the named file is missing."""
    import tomllib

    from osnova_server import config as config_module
    from osnova_server.backup import CONFIG_MEMBER, read_manifest, read_member

    path = config_module.resolve_path(args.config)
    if path is None or path.exists():
        return load_config(args)
    data = read_member(archive, read_manifest(archive), CONFIG_MEMBER)
    if data is None:
        raise CommandError(
            f"config file {path} not found and {archive} holds no config; create one with "
            f"`{PROG} --config {path} init --state-dir DIR` first", EXIT_USAGE,
        )
    try:
        return config_module.from_mapping(tomllib.loads(data.decode("utf-8")), source=path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise CommandError(f"{archive}: its config cannot be read ({err}); the backup is damaged") from None
    except config_module.ConfigError as err:
        raise CommandError("\n".join(err.problems), EXIT_USAGE) from None


def cmd_restore(args: argparse.Namespace) -> int:
    """Put a backup back in place of the state dir; the current state is moved aside, not deleted."""
    from osnova_server.backup import BackupError, restore_backup
    from osnova_server.statelock import StateDirBusy, StateDirLockError

    archive = Path(args.file)
    try:
        config = _restore_config(args, archive)
        report = restore_backup(archive, state_paths(config), force=args.force)
    except BackupError as err:
        raise CommandError(str(err), err.exit_code) from None
    except (StateDirBusy, StateDirLockError) as err:
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(f"cannot restore {archive} ({err.strerror}: {err.filename})") from None
    manifest = report.manifest
    print(
        f"restored {archive} (made {manifest.get('created_at')} by osnova-server {manifest.get('version')}, "
        f"schema version {manifest['schema_version']}) into {report.state_dir}"
    )
    if report.moved_aside is not None:
        print(f"the previous state is in {report.moved_aside}")
    if report.secret_written is not None:
        print(f"wrote the JWT secret file {report.secret_written}")
    if report.config_written is not None:
        print(f"wrote the config {report.config_written}")
    if report.config_kept is not None:
        print(f"kept the config {report.config_kept}; the backup's differs and is in {report.config_from_backup}")
    print(f"start the server with `{PROG} serve` (or `systemctl start osnova-server`)")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `backup` and `restore`."""
    backup = commands.add_parser(
        "backup", help="write a backup of the whole state (safe while serving)",
        description="Write the database (a consistent snapshot), secret, identity, certificates and "
                    "config to one tar file, mode 0600, and print its path.",
    )
    backup.add_argument("--output", metavar="FILE",
                        help="where to write it (default: osnova-backup-<UTC time>.tar here)")
    backup.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    backup.set_defaults(func=cmd_backup)
    restore = commands.add_parser(
        "restore", help="put a backup back (the server must be stopped)",
        description="Check a backup whole, move the current state dir aside to "
                    "<state_dir>.pre-restore-<UTC time> and put the backup in its place.",
    )
    restore.add_argument("file", metavar="FILE", help="a file written by `backup`")
    restore.add_argument("--force", action="store_true",
                         help="replace a state dir that already holds a database (it is moved aside)")
    restore.set_defaults(func=cmd_restore)
