"""`pair`, `devices` and `bans`: the household's devices and the addresses kept out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Final

from osnova_server.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
    Parser,
    call_server,
    load_config,
    positive,
    print_json,
    table,
)

if TYPE_CHECKING:
    from osnova_server.config import Config

MIN_PREFIX: Final = 4


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
    names = {device["device_id"]: device["name"] for device in devices}
    rows = [["DEVICE ID", "NAME", "ROLE", "PAIRED", "PAIRED BY", "LAST SEEN", "STATUS"]]
    for device in devices:
        rows.append([
            device["device_id"], device["name"], device["role"], device["paired_at"],
            _paired_by(device["paired_by"], names), device["last_seen"] or "-",
            "revoked" if device["revoked"] else "active",
        ])
    table(rows)
    return EXIT_OK


def _paired_by(paired_by: str | None, names: dict[str, str]) -> str:
    """`admin`, the name of the device that issued the code (its id once removed), or `-` if not recorded."""
    if paired_by is None:
        return "-"
    return names.get(paired_by, paired_by)


def resolve_device(devices: list[dict[str, Any]], text: str) -> dict[str, Any]:
    """The one device `text` names: its id, a unique id prefix of at least 4 characters, or a unique name.

    An exact id wins; otherwise every device whose name is `text`, or (for 4 characters or more)
    whose id starts with it, is a candidate, and there must be exactly one.
    """
    for device in devices:
        if device["device_id"] == text:
            return device
    matches = [device for device in devices if device["name"] == text]
    if len(text) >= MIN_PREFIX:
        matches += [device for device in devices if device["device_id"].startswith(text) and device not in matches]
    if len(matches) == 1:
        return matches[0]
    if matches:
        lines = [f"{text!r} matches {len(matches)} devices; name one by its id:"]
        lines += [f"  {d['device_id']}  {d['name']}  ({_state(d)})" for d in matches]
        raise CommandError("\n".join(lines), EXIT_USAGE)
    if len(text) < MIN_PREFIX:
        raise CommandError(
            f"{text!r} is no device's name, and an id prefix needs at least {MIN_PREFIX} characters; "
            f"see `{PROG} devices list`", EXIT_USAGE,
        )
    raise CommandError(f"no paired device has the id, id prefix or name {text!r}; see `{PROG} devices list`")


def _state(device: dict[str, Any]) -> str:
    """`member, active` or `owner, revoked`."""
    return f"{device['role']}, {'revoked' if device['revoked'] else 'active'}"


def _label(device: dict[str, Any]) -> str:
    """How a command names a device it acted on: id and name."""
    return f"{device['device_id']} ({device['name']})"


def _find(args: argparse.Namespace) -> tuple[Config, dict[str, Any]]:
    """The config and the device `args.device` names, looked up in the running server's list."""
    config = load_config(args)
    return config, resolve_device(call_server(config, "devices.list"), args.device)


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    """Revoke one paired device: its tokens stop working and its sockets close."""
    config, device = _find(args)
    call_server(config, "devices.revoke", {"device_id": device["device_id"]})
    print(f"revoked device {_label(device)}")
    return EXIT_OK


def cmd_devices_remove(args: argparse.Namespace) -> int:
    """Forget a revoked device; a live one must be revoked first."""
    config, device = _find(args)
    if not device["revoked"]:
        raise CommandError(
            f"device {_label(device)} is not revoked; revoke it first with "
            f"`{PROG} devices revoke {device['device_id']}`"
        )
    call_server(config, "devices.remove", {"device_id": device["device_id"]})
    print(f"removed device {_label(device)}")
    return EXIT_OK


def cmd_devices_role(args: argparse.Namespace) -> int:
    """Make a device an owner or a member."""
    config, device = _find(args)
    call_server(config, "devices.setRole", {"device_id": device["device_id"], "role": args.role})
    print(f"device {_label(device)} is now {'an owner' if args.role == 'owner' else 'a member'}")
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
    """Add `pair`, `devices list|revoke|remove|role` and `bans list|lift` to the subcommands."""
    pair = commands.add_parser("pair", help="print a pairing code and its QR code for a new device",
                               description="Ask the running server for a pairing code for a new device.")
    pair.set_defaults(func=cmd_pair)
    pair.add_argument("--name", metavar="NAME", help="name of the device to pair (shown in `devices list`)")
    pair.add_argument("--ttl", type=pairing_ttl, default=300, metavar="SECONDS",
                      help="how long the code works, 30 to 3600 (default 300)")
    pair.add_argument("--role", choices=("member", "owner"), default="member",
                      help="the role of the device that redeems the code (default member)")
    pair.add_argument("--json", action="store_true", help="print only the pairing payload as JSON")

    devices = commands.add_parser("devices", help="list, revoke, remove paired devices or change their role",
                                  description="Paired devices. DEVICE is an id, a unique id prefix of at least "
                                              f"{MIN_PREFIX} characters, or a unique name.")
    actions = devices.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list paired devices", description="List paired devices.")
    listing.set_defaults(func=cmd_devices_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    device_help = f"id, id prefix (at least {MIN_PREFIX} characters) or name, as `devices list` shows"
    revoke = actions.add_parser("revoke", help="revoke a device",
                                description="Revoke a paired device: its tokens stop working and its sockets close.")
    revoke.set_defaults(func=cmd_devices_revoke)
    revoke.add_argument("device", metavar="DEVICE", help=device_help)
    remove = actions.add_parser("remove", help="forget a revoked device",
                                description="Forget a revoked device (revoke a live one first).")
    remove.set_defaults(func=cmd_devices_remove)
    remove.add_argument("device", metavar="DEVICE", help=device_help)
    role = actions.add_parser("role", help="make a device an owner or a member",
                              description="Make a device an owner or a member; it applies from its next call.")
    role.set_defaults(func=cmd_devices_role)
    role.add_argument("device", metavar="DEVICE", help=device_help)
    role.add_argument("role", choices=("owner", "member"), metavar="ROLE", help="owner or member")

    bans = commands.add_parser("bans", help="list or lift IP bans", description="Addresses banned after failed logins.")
    actions = bans.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list banned addresses", description="List banned addresses.")
    listing.set_defaults(func=cmd_bans_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    lift = actions.add_parser("lift", help="lift the ban on an address", description="Lift the ban on an address.")
    lift.set_defaults(func=cmd_bans_lift)
    lift.add_argument("address", metavar="ADDRESS", help="IP address, as shown by `bans list`")
