"""The `osnova-server` command line: the parser, and one module per command group.

Every failure a user can cause ends as one line on stderr and a meaningful exit code (0 ok,
1 runtime failure, 2 bad usage or configuration), never a traceback. Each module of this
package adds its commands with `register(commands)`; this one only puts them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from osnova_server import __version__
from osnova_server.cli import (
    admin,
    apps,
    backup,
    cert,
    completion,
    devices,
    discover,
    migrate,
    rpc,
    serve,
    setup,
    status,
    systemd_unit,
)
from osnova_server.cli.common import EXIT_FAILURE, PROG, CommandError, Parser

__all__ = ["build_parser", "main"]

# The order `--help` lists the command groups in.
_GROUPS = (setup, serve, migrate, status, rpc, devices, apps, discover, backup, cert, admin, systemd_unit, completion)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = Parser(prog=PROG, description="The Osnova home-server daemon.")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $OSNOVA_CONFIG, "
                        "else /etc/osnova/server.toml if it exists, else embedded defaults)")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for group in _GROUPS:
        group.register(commands)
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
