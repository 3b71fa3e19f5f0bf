"""`discover`: list the Osnova servers this machine's LAN advertises, as a phone will see them."""

from __future__ import annotations

import argparse
import math
from typing import Any, Final

from osnova_server.cli.common import EXIT_FAILURE, EXIT_OK, CommandError, print_json, table

DEFAULT_TIMEOUT: Final = 3.0
MAX_TIMEOUT: Final = 60.0


def browse_seconds(text: str) -> float:
    """argparse type: how long to listen, in seconds (above 0, at most a minute)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_TIMEOUT:g} seconds")
    return value


def cmd_discover(args: argparse.Namespace) -> int:
    """Browse `_osnova._tcp` over mDNS for --timeout seconds and list what answered."""
    import asyncio

    from osnova_server.discovery.browser import browse

    try:
        servers = asyncio.run(browse(args.timeout))
    except OSError as err:
        raise CommandError(f"cannot listen for mDNS on this machine ({err.strerror or err}); "
                           "check that a network interface is up") from None
    if args.json:
        print_json([server.as_json() for server in servers])
    elif servers:
        rows = [["NAME", "ADDRESSES", "PORT", "TLS", "VERSION", "FINGERPRINT"]]
        for server in servers:
            rows.append([server.name, ",".join(server.addresses) or "-", str(server.port),
                         "yes" if server.tls else "no", server.version or "-", server.fingerprint or "-"])
        table(rows)
    if not servers:
        if not args.json:
            raise CommandError(f"no Osnova server answered on this network within {args.timeout:g} s; "
                               "is one running with [discovery] mdns on, on this LAN?")
        return EXIT_FAILURE
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `discover`."""
    discover = commands.add_parser(
        "discover", help="list the Osnova servers advertised on this network (mDNS)",
        description="Browse the LAN for Osnova servers over mDNS (_osnova._tcp) and list them: name, "
                    "addresses, port, TLS, version and the fingerprint a phone pins after pairing.",
    )
    discover.set_defaults(func=cmd_discover)
    discover.add_argument("--timeout", type=browse_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                          help=f"seconds to listen (default {DEFAULT_TIMEOUT:g})")
    discover.add_argument("--json", action="store_true", help="print a JSON array for scripts")
