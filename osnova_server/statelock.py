"""The state-dir lock: one process at a time owns a state directory (a server, or a restore).

Two servers writing one SQLite database, secret and identity would each believe their own
caches, so the second must refuse to start. The lock is `flock(2)` on `osnova.lock` inside the
state dir: the kernel releases it when its holder exits, even by `kill -9`, so a crash never
leaves a stale lock behind. The holder writes its PID and what it is (`serve`, `migrate`,
`restore`) into the file, so a refusal can name it and `cert renew` and `rotate-secret` send their
SIGHUP only to a server: to a migration or a restore it would be a kill (the PID is for people and
signals; the flock alone decides who holds the lock). The file itself stays in place after
release: unlinking a lock file lets two processes lock two different inodes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Final, Self

_LOGGER = logging.getLogger(__name__)

LOCK_NAME: Final = "osnova.lock"
_LOCK_MODE: Final = 0o600
# What a holder records after its PID. A file holding a PID alone was written by a server of an
# earlier version, which only servers locked.
SERVER: Final = "serve"
HOLDERS: Final = frozenset({SERVER, "migrate", "restore"})


class StateDirBusy(Exception):
    """Another live process holds the state dir's lock; the message names its PID."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "a process whose PID is not recorded"
        super().__init__(
            f"state directory {state_dir} is in use by another osnova-server ({holder}); "
            "stop it first, or give this one another [server] state_dir"
        )
        self.state_dir = state_dir
        self.pid = pid


class StateDirLockError(Exception):
    """The lock file cannot be created or locked at all (permissions, a read-only disk...)."""


class StateLock:
    """The held lock of one state dir; `release` (or process exit) lets the next owner in."""

    __slots__ = ("_fd", "path", "state_dir")

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path, holder: str = SERVER) -> StateLock:
        """Lock `state_dir` (which must exist) for this process, a `holder` (HOLDERS), or raise StateDirBusy."""
        assert holder in HOLDERS, holder
        path = state_dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _LOCK_MODE)
        except OSError as err:
            raise StateDirLockError(
                f"cannot open lock file {path} ({err.strerror}); check that the state directory "
                "exists and belongs to the server's user"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            pid = _read_holder(fd)[0]
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateDirBusy(state_dir, pid) from None
            raise StateDirLockError(f"cannot lock {path} ({err.strerror})") from None
        record = f"{os.getpid()} {holder}\n".encode("ascii")
        os.pwrite(fd, record, 0)
        os.ftruncate(fd, len(record))
        _LOGGER.debug("locked state directory %s", state_dir)
        return cls(state_dir, fd)

    def release(self) -> None:
        """Give the lock up; the PID is left in the file but means nothing without the flock."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(state_dir: Path) -> int | None:
    """The PID of the live process holding `state_dir`'s lock, or None when nobody holds it."""
    return _live_holder(state_dir)[0]


def server_pid(state_dir: Path) -> int | None:
    """The PID of the server holding `state_dir`'s lock; None when nobody, or a migration or restore, holds it."""
    pid, holder = _live_holder(state_dir)
    return pid if holder == SERVER else None


def _live_holder(state_dir: Path) -> tuple[int | None, str | None]:
    """The PID and kind of the live process holding `state_dir`'s lock, or (None, None)."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None, None
    try:
        try:
            # A shared lock is refused only while someone holds the exclusive one.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None, None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    """The PID and kind recorded in an open lock file, as far as it holds them."""
    try:
        words = os.pread(fd, 64, 0).decode("ascii").split()
    except (OSError, UnicodeDecodeError):
        return None, None
    if not words or not words[0].isdigit():
        return None, None
    return int(words[0]), (words[1] if len(words) > 1 else SERVER)
