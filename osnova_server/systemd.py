"""The systemd notification protocol (sd_notify), so `Type=notify` and the watchdog work.

Written against sd_notify(3) with the standard library only: a notification is one datagram on
the AF_UNIX socket named by `$NOTIFY_SOCKET`. Outside systemd every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Final

__all__ = ["READY", "RELOADING", "STOPPING", "WATCHDOG", "notify", "watchdog_interval"]

_LOGGER = logging.getLogger(__name__)

READY: Final = "READY=1"
STOPPING: Final = "STOPPING=1"
WATCHDOG: Final = "WATCHDOG=1"
RELOADING: Final = "RELOADING=1"

_SOCKET_ENV: Final = "NOTIFY_SOCKET"
_WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"
_WATCHDOG_PID_ENV: Final = "WATCHDOG_PID"
_USEC_PER_SECOND: Final = 1_000_000


def notify(message: str) -> bool:
    """Send `message` to systemd; return whether it was sent (False outside systemd)."""
    address = _notify_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: a full queue is a lost ping, not a stalled server.
            sock.setblocking(False)
            sock.sendto(message.encode(), address)
    except OSError as err:
        _LOGGER.debug("sd_notify %r to %s failed: %s", message, os.environ[_SOCKET_ENV], err)
        return False
    return True


def watchdog_interval() -> float | None:
    """Return how often to send WATCHDOG=1 (half the timeout), or None if no watchdog is on."""
    usec = _positive_int(os.environ.get(_WATCHDOG_USEC_ENV))
    if usec is None:
        return None
    pid = os.environ.get(_WATCHDOG_PID_ENV)
    if pid is not None and _positive_int(pid) != os.getpid():
        return None
    return usec / _USEC_PER_SECOND / 2


def _notify_address() -> str | bytes | None:
    """Return the socket address from `$NOTIFY_SOCKET`: a path, or abstract when it starts '@'."""
    value = os.environ.get(_SOCKET_ENV, "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        _LOGGER.debug("ignoring unsupported %s=%r", _SOCKET_ENV, value)
    return None


def _positive_int(text: str | None) -> int | None:
    """Return `text` as a positive integer, or None if it is absent or anything else."""
    if text is None or not text.strip().isdigit():
        return None
    number = int(text)
    return number if number > 0 else None
