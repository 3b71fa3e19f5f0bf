"""`token` and `rpc`: talk to the running server as admin, the way scripts do."""

from __future__ import annotations

import argparse
import json
from typing import Any

from osnova_server.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    admin_token,
    call_server,
    load_config,
    positive,
    print_json,
)


def cmd_token(args: argparse.Namespace) -> int:
    """Print a short-lived admin token, signed with the server's secret."""
    print(admin_token(load_config(args), args.ttl))
    return EXIT_OK


def cmd_rpc(args: argparse.Namespace) -> int:
    """Call one RPC method as admin on the running server and print its result as JSON."""
    params: Any = None
    if args.params is not None:
        try:
            params = json.loads(args.params, parse_constant=_not_json)
        except ValueError as err:
            raise CommandError(f"PARAMS_JSON is not valid JSON ({err})", EXIT_USAGE) from None
        if not isinstance(params, (list, dict)):
            raise CommandError("PARAMS_JSON must be a JSON array or object, e.g. '{\"app_id\": \"x\"}'", EXIT_USAGE)
    result = call_server(load_config(args), args.method, params, show_code=True)
    print_json(result)
    return EXIT_OK


def _not_json(word: str) -> Any:
    """json.loads hook: Python reads NaN and Infinity, which JSON has not (and orjson would send as null)."""
    raise ValueError(f"{word} is not a JSON number")


def register(commands: Any) -> None:
    """Add `token` and `rpc`."""
    token = commands.add_parser("token", help="print a short-lived admin access token",
                                description="Print a short-lived admin access token.")
    token.set_defaults(func=cmd_token)
    token.add_argument("--ttl", type=positive, default=600, metavar="SECONDS", help="lifetime (default 600)")
    rpc = commands.add_parser("rpc", help="call an RPC method as admin and print the JSON result",
                              description="Call an RPC method as admin and print the JSON result.")
    rpc.set_defaults(func=cmd_rpc)
    rpc.add_argument("method", metavar="METHOD", help="method name, e.g. status.get")
    rpc.add_argument("params", metavar="PARAMS_JSON", nargs="?", help="params as a JSON array or object")
