"""Durable writes of the small files the server keeps: config, secret, identity key, certificates.

Each file is written whole to a temporary beside it, with its final mode set before the first
byte, fsynced, then moved into place and the directory fsynced: a crash or power cut leaves
either the old file or the new one, never a torn or world-readable one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

PRIVATE_DIR_MODE: Final = 0o700


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry so a file created or renamed in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and any missing parents with mode 0700; leave existing ones alone."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for path in reversed(missing):
        path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a fresh temporary beside `path`, with `mode` from the start, fsynced."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by a crash of a process with this same pid
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)  # the umask may have narrowed os.open's mode
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace (or create) `path` with `data` and `mode`."""
    temporary = _write_temporary(path, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def create_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `data` and `mode`, whole or not at all; FileExistsError if it exists.

    link() refuses an existing name, so two processes starting at once keep one file: the
    loser gets FileExistsError and reads the winner's.
    """
    temporary = _write_temporary(path, data, mode)
    try:
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)
