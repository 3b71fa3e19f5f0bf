"""`admin-url`: a one-time link that signs a browser into the admin page.

The CLI asks the running server for it (`admin.loginLink`, as admin, with a token from the
secret), so the link's secret is made and kept only by the server that will accept it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from osnova_server.cli.common import EXIT_OK, call_server, load_config
from osnova_server.services.admin_sessions import DEFAULT_LINK_TTL, MAX_LINK_TTL, MIN_LINK_TTL


def link_ttl(text: str) -> int:
    """argparse type: a link lifetime, 60 to 3600 seconds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not MIN_LINK_TTL <= value <= MAX_LINK_TTL:
        raise argparse.ArgumentTypeError(f"must be from {MIN_LINK_TTL} to {MAX_LINK_TTL} seconds")
    return value


def cmd_admin_url(args: argparse.Namespace) -> int:
    """Print a single-use sign-in link for the admin page (stdout), and how long it works (stderr)."""
    link = call_server(load_config(args), "admin.loginLink", {"ttl": args.ttl})
    print(link["url"])
    print(f"Open it in a browser before {link['expires_at']}; it works once.", file=sys.stderr)
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `admin-url`."""
    admin_url = commands.add_parser(
        "admin-url", help="print a one-time link that signs a browser into the admin page",
        description="Print a one-time link that signs a browser into the admin page (/admin/) "
        "for 12 hours. The link works once, within --ttl seconds.",
    )
    admin_url.set_defaults(func=cmd_admin_url)
    admin_url.add_argument("--ttl", type=link_ttl, default=DEFAULT_LINK_TTL, metavar="SECONDS",
                           help=f"how long the link may wait to be opened, {MIN_LINK_TTL}-{MAX_LINK_TTL} (default {DEFAULT_LINK_TTL})")
