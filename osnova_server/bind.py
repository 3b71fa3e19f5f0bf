"""Can the configured address be listened on? Asked before any state is created, and by check-config."""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

from osnova_server.config import Config

__all__ = ["BindProblem", "bind_problem"]


class BindProblem(NamedTuple):
    """Why the address cannot be listened on, and whether the config is to blame (else the machine)."""

    message: str
    config_fault: bool


def bind_problem(config: Config) -> BindProblem | None:
    """Why `[server] bind_address` cannot be listened on now (one line), or None if it can.

    A trial bind, with the options the server's own listening socket uses (SO_REUSEADDR; `[::]`
    dual stack, other IPv6 addresses IPv6-only as asyncio makes them), closed at once. Port 0 always binds.
    """
    address = config.server.bind_address
    try:
        host, port = config.host, config.port
    except ValueError:  # validate() reports an address that does not parse
        return None
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return BindProblem(f"cannot bind {address}: the host name does not resolve ({err.strerror}); "
                           "fix [server] bind_address", config_fault=True)
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # `[::]` is served dual stack (web/connections.py), so IPv4 on the port counts too.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
                sock.bind(sockaddr)
                sock.listen(1)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return BindProblem(f"address {address} is already in use", config_fault=False)
            if err.errno == errno.EACCES:
                return BindProblem(f"not allowed to bind {address}; use a port above 1023", config_fault=False)
            if err.errno == errno.EADDRNOTAVAIL:
                return BindProblem(f"cannot bind {address}: no interface of this machine has that address; "
                                   "fix [server] bind_address", config_fault=True)
            return BindProblem(f"cannot bind {address}: {err.strerror}", config_fault=False)
    return None
