"""`init` and `check-config`: write a configuration, and say whether one can be used."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osnova_server.cli.common import EXIT_OK, EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from osnova_server.config import Config


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
    """Validate the config, its certificate, its secret and its port; print every problem found."""
    from osnova_server import config as config_module
    from osnova_server.config import ConfigError
    from osnova_server.security.secret import configured_secret

    problems: list[str] = []
    try:
        config = config_module.load(config_module.resolve_path(args.config))
    except ConfigError as err:
        if err.partial is None:  # no file to read, or not TOML: nothing more to look at
            raise CommandError("\n".join(err.problems), EXIT_USAGE) from None
        problems.extend(err.problems)
        config = err.partial
    # Loading files that validate() found missing or unreadable would only say so again.
    if config.tls.enabled and not config_module.tls_file_problems(config):
        from osnova_server.security.tls import TlsError, create_ssl_context

        try:
            create_ssl_context(Path(config.tls.cert_path), Path(config.tls.key_path))
        except TlsError as err:
            problems.append(str(err))
    try:
        configured_secret(config)
    except ConfigError as err:
        problems.extend(err.problems)
    problems.extend(_port_problems(config))
    if problems:
        raise CommandError("\n".join(problems), EXIT_USAGE)
    print("config OK")
    return EXIT_OK


def _port_problems(config: Config) -> list[str]:
    """Whether `serve` could listen on the bind address now; the running server's own port is no problem."""
    from osnova_server.bind import bind_problem
    from osnova_server.statelock import holder_pid

    if holder_pid(config.state_dir) is not None:
        return []  # a server runs on this state dir and holds the port: `check-config && reload` must pass
    problem = bind_problem(config)
    return [problem.message] if problem else []


def register(commands: Any) -> None:
    """Add `init` and `check-config`."""
    init = commands.add_parser("init", help="write a config file, state directory and secret",
                               description="Write a config file, state directory and secret.")
    init.set_defaults(func=cmd_init)
    init.add_argument("--state-dir", metavar="DIR", help="where the server keeps its state")
    init.add_argument("--bind", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8080)")
    init.add_argument("--self-signed", action="store_true", help="make a self-signed certificate and enable TLS")
    init.add_argument("--force", action="store_true", help="overwrite an existing config file")
    check = commands.add_parser("check-config", help="validate the config and exit",
                                description="Validate the config and exit.")
    check.set_defaults(func=cmd_check_config)
