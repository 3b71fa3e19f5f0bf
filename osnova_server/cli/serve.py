"""`serve` and `version`: run the daemon, or say which one this is."""

from __future__ import annotations

import argparse
from typing import Any

from osnova_server import __version__
from osnova_server.cli.common import EXIT_OK, PROG, CommandError, load_config


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"{PROG} {__version__}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server in the foreground until SIGTERM or SIGINT."""
    config = load_config(args)  # before importing aiohttp: a config mistake is reported at once
    from osnova_server.server import StartupError, run

    try:
        return run(config)
    except StartupError as err:
        raise CommandError(str(err), err.exit_code) from None


def register(commands: Any) -> None:
    """Add `serve` and `version`."""
    serve = commands.add_parser("serve", help="run the server in the foreground",
                                description="Run the server in the foreground.")
    serve.set_defaults(func=cmd_serve)
    version = commands.add_parser("version", help="print the version", description="Print the version.")
    version.set_defaults(func=cmd_version)
