"""The `osnova-server` command line.

Every failure a user can cause ends as one line on stderr and a meaningful exit code (0 ok,
1 runtime failure, 2 bad usage or configuration), never a traceback. Heavy modules are imported
inside the commands that need them, so `osnova-server version` starts in a blink.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from osnova_server import __version__

if TYPE_CHECKING:
    from osnova_server.client import OsnovaClient
    from osnova_server.config import Config

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
PROG: Final = "osnova-server"


class CommandError(Exception):
    """A command failed in a way the user can understand; printed as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the problem, exit 2."""
        self.exit(EXIT_USAGE, f"{PROG}: {message} (see `{PROG} --help`)\n")


def _load_config(args: argparse.Namespace) -> Config:
    """The config chosen by --config, $OSNOVA_CONFIG or /etc/osnova/server.toml, or the defaults."""
    from osnova_server import config

    try:
        return config.load(config.resolve_path(args.config))
    except config.ConfigError as err:
        raise CommandError("\n".join(err.problems), EXIT_USAGE) from None


# -- commands ------------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"{PROG} {__version__}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """Write a complete config file, the state dir, a secret and optionally a certificate."""
    from osnova_server import config as config_module
    from osnova_server.security.secret import write_secret_file

    path = config_module.resolve_path(args.config, {"OSNOVA_CONFIG": os.environ.get("OSNOVA_CONFIG", "")})
    path = path or config_module.SYSTEM_CONFIG_PATH
    if path.exists() and not args.force:
        raise CommandError(f"config {path} already exists; pass --force to overwrite it")
    state_dir = Path(args.state_dir or config_module.default_state_dir()).expanduser().resolve()
    bind = args.bind or config_module.ServerSection().bind_address
    try:
        config_module.parse_bind_address(bind)
    except ValueError as err:
        raise CommandError(f"--bind {bind!r} does not parse ({err})", EXIT_USAGE) from None
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address=bind, state_dir=str(state_dir))
    config = config_module.replace(config, "auth", jwt_secret_file=str(state_dir / "jwt.secret"))
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        secret_path = state_dir / "jwt.secret"
        if not secret_path.exists():
            write_secret_file(secret_path)
        if args.self_signed:
            from osnova_server.security.tls import TlsError, generate_self_signed

            cert, key = state_dir / "certs" / "server.crt", state_dir / "certs" / "server.key"
            try:
                generate_self_signed(cert, key)
            except TlsError as err:
                raise CommandError(str(err)) from None
            config = config_module.replace(config, "tls", enabled=True, cert_path=str(cert), key_path=str(key))
        config_module.write(config, path)
    except PermissionError as err:
        raise CommandError(f"permission denied writing {err.filename}; run as a user who may write there") from None
    except OSError as err:
        raise CommandError(f"cannot write {err.filename or path}: {err.strerror}") from None
    print(f"wrote {path}")
    print(f"state directory {state_dir}")
    if args.self_signed:
        print(f"self-signed certificate {state_dir / 'certs' / 'server.crt'}")
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config, its certificate and its secret; print every problem found."""
    from osnova_server.config import ConfigError
    from osnova_server.security.secret import configured_secret

    config = _load_config(args)
    problems: list[str] = []
    if config.tls.enabled:
        from osnova_server.security.tls import TlsError, create_ssl_context

        try:
            create_ssl_context(Path(config.tls.cert_path), Path(config.tls.key_path))
        except TlsError as err:
            problems.append(str(err))
    try:
        configured_secret(config)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise CommandError("\n".join(problems), EXIT_USAGE)
    print("config OK")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server in the foreground until SIGTERM or SIGINT."""
    config = _load_config(args)  # before importing aiohttp: a config mistake is reported at once
    from osnova_server.server import StartupError, run

    try:
        return run(config)
    except StartupError as err:
        raise CommandError(str(err), err.exit_code) from None


def cmd_token(args: argparse.Namespace) -> int:
    """Print a short-lived admin token, signed with the server's secret."""
    print(admin_token(_load_config(args), args.ttl))
    return EXIT_OK


def cmd_rpc(args: argparse.Namespace) -> int:
    """Call one RPC method as admin on the running server and print its result as JSON."""
    params: Any = None
    if args.params is not None:
        try:
            params = json.loads(args.params)
        except ValueError as err:
            raise CommandError(f"PARAMS_JSON is not valid JSON ({err})", EXIT_USAGE) from None
        if not isinstance(params, (list, dict)):
            raise CommandError("PARAMS_JSON must be a JSON array or object, e.g. '{\"app_id\": \"x\"}'", EXIT_USAGE)
    result = call_server(_load_config(args), args.method, params, show_code=True)
    print_json(result)
    return EXIT_OK


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
    """The URL this machine reaches its own server at (a wildcard bind means loopback)."""
    host, port = config.host, config.port
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{config.scheme}://{host}:{port}"


def local_ssl_context(config: Config) -> ssl.SSLContext | None:
    """Trust exactly the server's own configured certificate when talking to it over TLS.

    The CLI talks to the server on this machine, so it pins the certificate file the server
    serves instead of asking the system trust store (which a self-signed one is not in), and
    does not check the host name (a LAN certificate need not name 127.0.0.1).
    """
    if not config.tls.enabled:
        return None
    context = ssl.create_default_context(cafile=config.tls.cert_path)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def local_client(config: Config) -> OsnovaClient:
    """An admin client of the server `config` describes."""
    from osnova_server.client import OsnovaClient

    return OsnovaClient(local_url(config), admin_token(config, 120), ssl_context=local_ssl_context(config))


def _positive(text: str) -> int:
    """argparse type: a whole number of seconds, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# -- paired devices and bans (they talk to the running server as admin) ---------------------


def call_server(config: Config, method: str, params: Any = None, *, show_code: bool = False) -> Any:
    """Call one method as admin on the running server; any failure becomes a one-line CommandError.

    `rpc` shows the JSON-RPC error code, for scripts; the friendlier commands show the sentence only.
    """
    import asyncio

    from osnova_server.client import RpcCallError, TransportError

    async def call() -> Any:
        async with local_client(config) as client:
            return await client.call(method, params)

    try:
        return asyncio.run(call())
    except RpcCallError as err:
        raise CommandError(f"error {err.code}: {err.message}" if show_code else err.message) from None
    except TransportError as err:
        if err.status is None:
            raise CommandError(f"cannot reach {local_url(config)}; is `{PROG} serve` running?") from None
        raise CommandError(str(err)) from None


def _pairing_ttl(text: str) -> int:
    """argparse type: a pairing code lifetime within the server's bounds."""
    from osnova_server.services.pairing import MAX_TTL, MIN_TTL

    value = _positive(text)
    if not MIN_TTL <= value <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"must be from {MIN_TTL} to {MAX_TTL} seconds")
    return value


def cmd_pair(args: argparse.Namespace) -> int:
    """Ask the running server for a pairing code; print it, its expiry and a QR code of the payload."""
    params: dict[str, Any] = {"ttl": args.ttl}
    if args.name is not None:
        params["name"] = args.name
    payload = call_server(_load_config(args), "pairing.start", params)
    if args.json:
        print_json(payload)
        return EXIT_OK
    import qrcode  # type: ignore[import-untyped]  # no stubs published

    qr = qrcode.QRCode(border=2)
    qr.add_data(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    qr.print_ascii(out=sys.stdout, tty=False)
    print(f"pairing code  {payload['pairing']['code']}")
    print(f"expires at    {payload['pairing']['expiresAt']} (in {args.ttl} s)")
    print(f"server        {payload['server']['address']}")
    print(f"fingerprint   {payload['server']['fingerprint']}")
    print("Scan the QR code with the Osnova app on the new device, or type the code there; it works once.")
    return EXIT_OK


def _table(rows: list[list[str]]) -> None:
    """Print rows as left-aligned columns, the first row being the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_devices_list(args: argparse.Namespace) -> int:
    """List the paired devices."""
    devices = call_server(_load_config(args), "devices.list")
    if args.json:
        print_json(devices)
        return EXIT_OK
    if not devices:
        print(f"no paired devices; pair one with `{PROG} pair`")
        return EXIT_OK
    rows = [["DEVICE ID", "NAME", "PAIRED", "LAST SEEN", "STATUS"]]
    for device in devices:
        rows.append([
            device["device_id"], device["name"], device["paired_at"], device["last_seen"] or "-",
            "revoked" if device["revoked"] else "active",
        ])
    _table(rows)
    return EXIT_OK


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    """Revoke one paired device: its tokens stop working and its sockets close."""
    call_server(_load_config(args), "devices.revoke", {"device_id": args.device_id})
    print(f"revoked device {args.device_id}")
    return EXIT_OK


def cmd_bans_list(args: argparse.Namespace) -> int:
    """List the banned addresses."""
    bans = call_server(_load_config(args), "bans.list")
    if args.json:
        print_json(bans)
        return EXIT_OK
    if not bans:
        print("no addresses are banned")
        return EXIT_OK
    _table([["ADDRESS", "BANNED UNTIL", "REASON"]] + [[b["address"], b["banned_until"], b["reason"]] for b in bans])
    return EXIT_OK


def cmd_bans_lift(args: argparse.Namespace) -> int:
    """Lift the ban on one address."""
    call_server(_load_config(args), "bans.lift", {"address": args.address})
    print(f"lifted the ban on {args.address}")
    return EXIT_OK


def _add_device_commands(commands: Any) -> None:
    """Add `pair`, `devices list|revoke` and `bans list|lift` to the subcommands."""
    pair = commands.add_parser("pair", help="print a pairing code and its QR code for a new device",
                               description="Ask the running server for a pairing code for a new device.")
    pair.set_defaults(func=cmd_pair)
    pair.add_argument("--name", metavar="NAME", help="name of the device to pair (shown in `devices list`)")
    pair.add_argument("--ttl", type=_pairing_ttl, default=300, metavar="SECONDS",
                      help="how long the code works, 30 to 3600 (default 300)")
    pair.add_argument("--json", action="store_true", help="print only the pairing payload as JSON")

    devices = commands.add_parser("devices", help="list or revoke paired devices", description="Paired devices.")
    actions = devices.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list paired devices", description="List paired devices.")
    listing.set_defaults(func=cmd_devices_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke a device", description="Revoke a paired device.")
    revoke.set_defaults(func=cmd_devices_revoke)
    revoke.add_argument("device_id", metavar="DEVICE_ID", help="as shown by `devices list`")

    bans = commands.add_parser("bans", help="list or lift IP bans", description="Addresses banned after failed logins.")
    actions = bans.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list banned addresses", description="List banned addresses.")
    listing.set_defaults(func=cmd_bans_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    lift = actions.add_parser("lift", help="lift the ban on an address", description="Lift the ban on an address.")
    lift.set_defaults(func=cmd_bans_lift)
    lift.add_argument("address", metavar="ADDRESS", help="IP address, as shown by `bans list`")


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog=PROG, description="The Osnova home-server daemon.")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $OSNOVA_CONFIG, "
                        "else /etc/osnova/server.toml if it exists, else embedded defaults)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        return sub

    init = add("init", cmd_init, "write a config file, state directory and secret")
    init.add_argument("--state-dir", metavar="DIR", help="where the server keeps its state")
    init.add_argument("--bind", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8080)")
    init.add_argument("--self-signed", action="store_true", help="make a self-signed certificate and enable TLS")
    init.add_argument("--force", action="store_true", help="overwrite an existing config file")
    add("serve", cmd_serve, "run the server in the foreground")
    add("check-config", cmd_check_config, "validate the config and exit")
    token = add("token", cmd_token, "print a short-lived admin access token")
    token.add_argument("--ttl", type=_positive, default=600, metavar="SECONDS", help="lifetime (default 600)")
    rpc = add("rpc", cmd_rpc, "call an RPC method as admin and print the JSON result")
    rpc.add_argument("method", metavar="METHOD", help="method name, e.g. status.get")
    rpc.add_argument("params", metavar="PARAMS_JSON", nargs="?", help="params as a JSON array or object")
    _add_device_commands(commands)
    add("version", cmd_version, "print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `osnova-server` script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CommandError as err:
        for line in str(err).splitlines() or [str(err)]:
            print(f"{PROG}: {line}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE


def print_json(value: Any) -> None:
    """Print a JSON value for scripts."""
    print(json.dumps(value, indent=2, ensure_ascii=False))
