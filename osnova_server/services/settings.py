"""Server settings changed at run time and kept in the database: the advertised server address.

`config.setServer` stores the address devices should reach the server at; it overrides the
config file's `[server] advertised_address` from then on, across restarts, and pairing codes
point at it. Addresses are normalized before they are stored (lower-case scheme and host, no
trailing "/"), so what `config.getServer` answers is what pairing hands out.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from osnova_server.errors import InvalidParams
from osnova_server.events import CONFIG_CHANGED, Bus
from osnova_server.store import Store

_LOGGER = logging.getLogger(__name__)

SERVER_ADDRESS_KEY: Final = "server.address"
MAX_ADDRESS_CHARS: Final = 2048
_EXAMPLE: Final = "use a URL like https://osnova.local:8443"
# DNS labels (letters, digits, hyphens, underscores as some LANs use them) joined by dots.
_HOSTNAME: Final = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?")
_UNSAFE: Final = re.compile(r"[\x00-\x20\x7f\\]")


def _invalid(reason: str) -> InvalidParams:
    """The -32602 error for a bad `address`; it never repeats the value, which may hold a password."""
    return InvalidParams(f"Invalid params: 'address' {reason}; {_EXAMPLE}")


def normalize_server_address(address: str) -> str:
    """Check `address` is an `http(s)://host[:port]` URL and return its canonical form."""
    if len(address) > MAX_ADDRESS_CHARS:
        raise _invalid(f"is longer than {MAX_ADDRESS_CHARS} characters")
    if _UNSAFE.search(address):
        raise _invalid("must not contain spaces, backslashes or control characters")
    try:
        parts = urlsplit(address)
    except ValueError:  # unbalanced or invalid [IPv6] brackets
        raise _invalid("has a bracketed host that is not an IPv6 address") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not address.lower().startswith(f"{scheme}://"):
        raise _invalid("must start with http:// or https://")
    if "@" in parts.netloc:
        raise _invalid("must not contain user info (user:password@)")
    if parts.path not in ("", "/"):
        raise _invalid("must not have a path")
    if parts.query or address.rstrip("/").endswith("?"):
        raise _invalid("must not have a query")
    if parts.fragment or "#" in address:
        raise _invalid("must not have a fragment")
    host = _host(parts.netloc)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.netloc.endswith(":") or (port is not None and not 1 <= port <= 65535):
        raise _invalid("has a port that is not a number from 1 to 65535")
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _host(netloc: str) -> str:
    """The host part of `netloc`, lower-cased, IPv6 kept in brackets; refused if malformed."""
    if netloc.startswith("["):
        literal, _, rest = netloc[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise _invalid("has text between the bracketed host and the port")
        try:
            return f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            raise _invalid("has a bracketed host that is not an IPv6 address") from None
    host = netloc.rpartition(":")[0] if ":" in netloc else netloc
    host = host.lower()
    if not host:
        raise _invalid("must name a host")
    if not _HOSTNAME.fullmatch(host):
        raise _invalid("has a host that is not a valid host name or IP address")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _invalid("has a host that is not a valid IPv4 address") from None
    return host


class ServerSettings:
    """The stored server address, falling back to the config file's `advertised_address`."""

    __slots__ = ("_configured", "_events", "_store")

    def __init__(self, store: Store, events: Bus, configured: Callable[[], str]) -> None:
        # `configured` is read on every call, so a SIGHUP-reloaded config file is honoured.
        self._store = store
        self._events = events
        self._configured = configured

    async def get_server(self) -> str | None:
        """The advertised address: the stored one, else the config's, else None."""
        stored = await self._store.setting(SERVER_ADDRESS_KEY)
        if stored:
            return stored
        return self._configured() or None

    async def set_server(self, address: str) -> str:
        """Validate, store (committed) and announce a new advertised address; return it normalized."""
        normalized = normalize_server_address(address)
        await self._store.put_setting(SERVER_ADDRESS_KEY, normalized)
        _LOGGER.info("advertised server address set to %s", normalized)
        self._events.publish(CONFIG_CHANGED, {"key": SERVER_ADDRESS_KEY, "value": normalized})
        return normalized
