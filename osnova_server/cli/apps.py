"""`apps list|install|uninstall`: the app methods as commands, tables for people and JSON for scripts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from osnova_server.cli.common import EXIT_OK, PROG, CommandError, Parser, call_server, load_config, print_json, table


def manifest_uri(text: str) -> str:
    """A URI as given, or a path to a local manifest as the `file://` URI the server fetches."""
    if "://" in text:
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is neither a URI (https://...) nor a manifest file here")
    return path.resolve().as_uri()


def cmd_apps_list(args: argparse.Namespace) -> int:
    """List the installed apps."""
    apps = call_server(load_config(args), "apps.list")
    if args.json:
        print_json(apps)
        return EXIT_OK
    if not apps:
        print(f"no apps installed; install one with `{PROG} apps install URI`")
        return EXIT_OK
    rows = [["APP ID", "NAME", "VERSION", "INSTALLED", "MANIFEST"]]
    rows += [[app["id"], app["name"], app["version"], app["installed_at"], app["manifest_uri"]] for app in apps]
    table(rows)
    return EXIT_OK


def cmd_apps_install(args: argparse.Namespace) -> int:
    """Install (or upgrade) the app whose manifest is at URI."""
    app_id = call_server(load_config(args), "apps.install", {"manifest_uri": args.uri})
    print(f"installed app {app_id} from {args.uri}")
    return EXIT_OK


def cmd_apps_uninstall(args: argparse.Namespace) -> int:
    """Uninstall one app; exit 1 when no app has that id."""
    if not call_server(load_config(args), "apps.uninstall", {"app_id": args.app_id}):
        raise CommandError(f"no installed app has the id {args.app_id!r}; see `{PROG} apps list`")
    print(f"uninstalled app {args.app_id}")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `apps list|install|uninstall`."""
    apps = commands.add_parser("apps", help="list, install or uninstall apps", description="Installed Osnova apps.")
    actions = apps.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list installed apps", description="List installed apps.")
    listing.set_defaults(func=cmd_apps_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    install = actions.add_parser("install", help="install or upgrade an app from its manifest",
                                 description="Install (or upgrade) an app from its manifest URI or file.")
    install.set_defaults(func=cmd_apps_install)
    install.add_argument("uri", metavar="URI", type=manifest_uri,
                         help="https:// URI of the manifest, or a manifest file on this machine")
    uninstall = actions.add_parser("uninstall", help="uninstall an app", description="Uninstall an app.")
    uninstall.set_defaults(func=cmd_apps_uninstall)
    uninstall.add_argument("app_id", metavar="APP_ID", help="as shown by `apps list`")
