"""The `osnova-server` command line: the parser, and one module per command group.

Every failure a user can cause ends as one line on stderr and a meaningful exit code (0 ok,
1 runtime failure, 2 bad usage or configuration), never a traceback. Each module of this
package adds its commands with `register(commands)`; this one only puts them together.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Final

from osnova_server import __version__
from osnova_server.cli.common import EXIT_FAILURE, PROG, CommandError, Parser

__all__ = ["build_parser", "main"]

# The command group modules, in the order `--help` lists them.
GROUPS: Final = ("setup", "serve", "migrate", "status", "rpc", "devices", "apps", "discover", "backup", "cert",
                 "admin", "systemd_unit", "completion")
# Which group module adds each command. This is the one place that says why the CLI imports
# lazily: a command needs only its own module, so `serve` and `version` do not pay for the
# imports of the other twelve (asyncio, ssl, the admin sessions...). `--help`, a mistyped
# command and `completion` still build the whole parser. tests/test_startup_imports.py checks this table
# against what the modules register.
COMMANDS: Final = {
    "init": "setup", "check-config": "setup", "serve": "serve", "version": "serve", "migrate": "migrate",
    "status": "status", "token": "rpc", "rpc": "rpc", "pair": "devices", "devices": "devices", "bans": "devices",
    "apps": "apps", "discover": "discover", "backup": "backup", "restore": "backup", "cert": "cert",
    "rotate-secret": "cert", "admin-url": "admin", "systemd-unit": "systemd_unit", "completion": "completion",
}


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command word of argv, when only `--config` comes before it; else None (the full parser decides)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("--config="):
            return None if word.startswith("-") else word
    return None


def build_parser(groups: Iterable[str] = GROUPS) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of `groups` (default: every one)."""
    parser = Parser(prog=PROG, description="The Osnova home-server daemon.")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $OSNOVA_CONFIG, "
                        "else /etc/osnova/server.toml if it exists, else embedded defaults)")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for group in groups:
        importlib.import_module(f"osnova_server.cli.{group}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `osnova-server` script."""
    words = sys.argv[1:] if argv is None else argv
    group = COMMANDS.get(chosen_command(words) or "")
    args = build_parser([group] if group else GROUPS).parse_args(words)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, so a reader gone early (`| head`) is caught below, not at exit
        return code
    except BrokenPipeError:
        # What the `signal` module's docs advise for SIGPIPE: point stdout at /dev/null so the
        # interpreter's own flush at exit finds nothing to write, and end without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except CommandError as err:
        for line in str(err).splitlines() or [str(err)]:
            print(f"{PROG}: {line}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
