"""`completion bash|zsh`: a shell completion script generated from the parser itself, with shtab."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from osnova_server.cli.common import EXIT_OK

SHELLS: Final = ("bash", "zsh")


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script for the chosen shell."""
    import shtab

    from osnova_server.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `completion`."""
    completion = commands.add_parser(
        "completion", help="print a shell completion script",
        description="Print a shell completion script, e.g. "
                    "`osnova-server completion bash > /etc/bash_completion.d/osnova-server`, or for zsh "
                    "`osnova-server completion zsh > \"${fpath[1]}/_osnova-server\"`.",
    )
    completion.set_defaults(func=cmd_completion)
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")
