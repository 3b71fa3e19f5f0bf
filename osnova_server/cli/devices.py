"""`pair`, `devices` and `bans`: the household's devices and the addresses kept out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from osnova_server.cli.common import (
    EXIT_OK,
    PROG,
    Parser,
    call_server,
    load_config,
    positive,
    print_json,
    table,
)


def pairing_ttl(text: str) -> int:
    """argparse type: a pairing code lifetime within the server's bounds."""
    from osnova_server.services.pairing import MAX_TTL, MIN_TTL

    value = positive(text)
    if not MIN_TTL <= value <= MAX_TTL:
        raise argparse.ArgumentTypeError(f"must be from {MIN_TTL} to {MAX_TTL} seconds")
    return value


def cmd_pair(args: argparse.Namespace) -> int:
    """Ask the running server for a pairing code; print it, its expiry and a QR code of the payload."""
    params: dict[str, Any] = {"ttl": args.ttl, "role": args.role}
    if args.name is not None:
        params["name"] = args.name
    payload = call_server(load_config(args), "pairing.start", params)
    if args.json:
        print_json(payload)
        return EXIT_OK
    import os
    import shutil

    from osnova_server.cli.terminal_qr import draw

    text = [
        "Scan the QR code below with the Osnova app on the new device, or type the code there; it works once.",
        f"server        {payload['server']['address']}",
        f"fingerprint   {payload['server']['fingerprint']}",
        f"role          {args.role}",
        f"expires at    {payload['pairing']['expiresAt']} (in {args.ttl} s)",
        f"pairing code  {payload['pairing']['code']}",
    ]
    # The QR comes last, so that on a short terminal the text scrolls away rather than the code.
    size = shutil.get_terminal_size()
    room = size.lines - len(text) - 1
    color = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    print("\n".join([*text, *draw(data, room, color, size.columns)]))
    return EXIT_OK


def cmd_devices_list(args: argparse.Namespace) -> int:
    """List the paired devices."""
    devices = call_server(load_config(args), "devices.list")
    if args.json:
        print_json(devices)
        return EXIT_OK
    if not devices:
        print(f"no paired devices; pair one with `{PROG} pair`")
        return EXIT_OK
    rows = [["DEVICE ID", "NAME", "ROLE", "PAIRED", "LAST SEEN", "STATUS"]]
    for device in devices:
        rows.append([
            device["device_id"], device["name"], device["role"], device["paired_at"], device["last_seen"] or "-",
            "revoked" if device["revoked"] else "active",
        ])
    table(rows)
    return EXIT_OK


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    """Revoke one paired device: its tokens stop working and its sockets close."""
    call_server(load_config(args), "devices.revoke", {"device_id": args.device_id})
    print(f"revoked device {args.device_id}")
    return EXIT_OK


def cmd_bans_list(args: argparse.Namespace) -> int:
    """List the banned addresses."""
    bans = call_server(load_config(args), "bans.list")
    if args.json:
        print_json(bans)
        return EXIT_OK
    if not bans:
        print("no addresses are banned")
        return EXIT_OK
    table([["ADDRESS", "BANNED UNTIL", "REASON"]] + [[b["address"], b["banned_until"], b["reason"]] for b in bans])
    return EXIT_OK


def cmd_bans_lift(args: argparse.Namespace) -> int:
    """Lift the ban on one address."""
    call_server(load_config(args), "bans.lift", {"address": args.address})
    print(f"lifted the ban on {args.address}")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `pair`, `devices list|revoke` and `bans list|lift` to the subcommands."""
    pair = commands.add_parser("pair", help="print a pairing code and its QR code for a new device",
                               description="Ask the running server for a pairing code for a new device.")
    pair.set_defaults(func=cmd_pair)
    pair.add_argument("--name", metavar="NAME", help="name of the device to pair (shown in `devices list`)")
    pair.add_argument("--ttl", type=pairing_ttl, default=300, metavar="SECONDS",
                      help="how long the code works, 30 to 3600 (default 300)")
    pair.add_argument("--role", choices=("member", "owner"), default="member",
                      help="the role of the device that redeems the code (default member)")
    pair.add_argument("--json", action="store_true", help="print only the pairing payload as JSON")

    devices = commands.add_parser("devices", help="list or revoke paired devices", description="Paired devices.")
    actions = devices.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list paired devices", description="List paired devices.")
    listing.set_defaults(func=cmd_devices_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke a device", description="Revoke a paired device.")
    revoke.set_defaults(func=cmd_devices_revoke)
    revoke.add_argument("device_id", metavar="DEVICE_ID", help="as shown by `devices list`")

    bans = commands.add_parser("bans", help="list or lift IP bans", description="Addresses banned after failed logins.")
    actions = bans.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list banned addresses", description="List banned addresses.")
    listing.set_defaults(func=cmd_bans_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    lift = actions.add_parser("lift", help="lift the ban on an address", description="Lift the ban on an address.")
    lift.set_defaults(func=cmd_bans_lift)
    lift.add_argument("address", metavar="ADDRESS", help="IP address, as shown by `bans list`")
