"""What every command shares: exit codes, one-line errors, the config, and the admin client.

Heavy modules are imported inside the functions that need them, so `osnova-server version`
starts in a blink.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

if TYPE_CHECKING:
    import ssl

    from osnova_server.client import OsnovaClient
    from osnova_server.config import Config

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
PROG: Final = "osnova-server"

T = TypeVar("T")


class CommandError(Exception):
    """A command failed in a way the user can understand; printed as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the problem, exit 2."""
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see `{PROG} --help`)\n")


def load_config(args: argparse.Namespace) -> Config:
    """The config chosen by --config, $OSNOVA_CONFIG or /etc/osnova/server.toml, or the defaults."""
    from osnova_server import config

    try:
        return config.load(config.resolve_path(args.config))
    except config.ConfigError as err:
        raise CommandError("\n".join(err.problems), EXIT_USAGE) from None


def admin_token(config: Config, ttl: int) -> str:
    """An admin token for `config`'s server; needs read access to its secret."""
    from osnova_server.config import ConfigError
    from osnova_server.security.secret import SecretUnreadable, configured_secret
    from osnova_server.security.tokens import Scope, TokenAuthority

    try:
        secret = configured_secret(config)
    except SecretUnreadable as err:
        raise CommandError("\n".join(err.problems)) from None
    except ConfigError as err:
        raise CommandError("\n".join(err.problems), EXIT_USAGE) from None
    if secret is None:
        raise CommandError(
            f"no JWT secret at {config.secret_file}; start the server once or run `{PROG} init`"
        )
    token, _ = TokenAuthority(secret, config.auth.token_expiry).issue(Scope.ADMIN, None, ttl)
    return token


def local_url(config: Config) -> str:
    """The URL this machine reaches its own server at (a wildcard bind means loopback).

    A host name is resolved here, as the connection would resolve it: sent as the Host header,
    a name the server does not know as its own would be refused with 421.
    """
    host, port = config.host, config.port
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    elif host != "localhost":
        host = _address_of(host, port)
    if ":" in host:
        host = f"[{host}]"
    return f"{config.scheme}://{host}:{port}"


def _address_of(host: str, port: int) -> str:
    """`host` if it is an IP address, else the first address it resolves to (itself when it does not)."""
    import ipaddress
    import socket

    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
    except OSError:
        return host  # connecting fails too, and says so


def local_ssl_context(config: Config) -> ssl.SSLContext | None:
    """Trust exactly the server's own configured certificate when talking to it over TLS.

    The CLI talks to the server on this machine, so it pins the certificate file the server
    serves instead of asking the system trust store (which a self-signed one is not in), and
    does not check the host name (a LAN certificate need not name 127.0.0.1).
    """
    import ssl

    if not config.tls.enabled:
        return None
    try:
        context = ssl.create_default_context(cafile=config.tls.cert_path)
    except (ssl.SSLError, OSError) as err:  # validation saw the file; its contents are not a certificate
        raise CommandError(
            f"certificate {config.tls.cert_path} cannot be loaded ({getattr(err, 'reason', None) or err}); "
            "point [tls] cert_path at the PEM certificate the server serves", EXIT_USAGE,
        ) from None
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def local_client(config: Config) -> OsnovaClient:
    """An admin client of the server `config` describes."""
    from osnova_server.client import OsnovaClient

    return OsnovaClient(local_url(config), admin_token(config, 120), ssl_context=local_ssl_context(config))


def with_server(config: Config, use: Callable[[OsnovaClient], Awaitable[T]], *, show_code: bool = False) -> T:
    """Run `use` with an admin client of the running server; any failure becomes a one-line CommandError.

    `rpc` shows the JSON-RPC error code, for scripts; the friendlier commands show the sentence only.
    """
    import asyncio

    from osnova_server.client import RpcCallError, ServerUnreachable, TransportError, UntrustedCertificate

    async def run() -> T:
        async with local_client(config) as client:
            return await use(client)

    try:
        return asyncio.run(run())
    except RpcCallError as err:
        raise CommandError(f"error {err.code}: {err.message}" if show_code else err.message) from None
    except ServerUnreachable:
        raise CommandError(f"cannot reach {local_url(config)}; is `{PROG} serve` running?") from None
    except UntrustedCertificate as err:
        # The server runs, but not with the certificate file the CLI pins (replaced and not reloaded?).
        raise CommandError(
            f"{err}; the CLI trusts only {config.tls.cert_path}: if it was replaced, reload the server "
            "(`systemctl reload osnova-server`) or check [tls] in the config"
        ) from None
    except TransportError as err:
        raise CommandError(str(err)) from None


def call_server(config: Config, method: str, params: Any = None, *, show_code: bool = False) -> Any:
    """Call one method as admin on the running server; any failure becomes a one-line CommandError."""

    async def call(client: OsnovaClient) -> Any:
        return await client.call(method, params)

    return with_server(config, call, show_code=show_code)


def positive(text: str) -> int:
    """argparse type: a whole number of seconds, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# C0, DEL, C1 and the bidirectional overrides, shown as escapes: table cells come from manifests,
# devices and mDNS answers, and must not move the cursor, retitle the terminal or reorder a line.
_VISIBLE: Final = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def table(rows: list[list[str]]) -> None:
    """Print rows as left-aligned columns, the first row being the header."""
    rows = [[cell.translate(_VISIBLE) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def print_json(value: Any) -> None:
    """Print a JSON value for scripts."""
    print(json.dumps(value, indent=2, ensure_ascii=False))
