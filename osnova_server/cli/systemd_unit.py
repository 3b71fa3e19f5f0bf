"""`systemd-unit`: the packaged unit, with ExecStart= naming this installation's program and config."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Final

from osnova_server.cli.common import EXIT_OK, PROG, CommandError

UNIT_NAME: Final = "osnova-server.service"
DEFAULT_CONFIG: Final = "/etc/osnova/server.toml"


def packaged_unit() -> str:
    """The unit shipped inside the package: the one source of truth for it."""
    return (resources.files("osnova_server") / "units" / UNIT_NAME).read_text(encoding="utf-8")


def program() -> list[str]:
    """How to start this installation: its `osnova-server` script, else this interpreter with -m."""
    invoked = Path(sys.argv[0])
    if invoked.name == PROG and invoked.is_file():
        return [str(invoked.absolute())]
    beside = Path(sys.executable).parent / PROG
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "osnova_server"]


def _quoted(word: str) -> str:
    """A word as systemd's command-line syntax reads it (double quotes around white space)."""
    if word and not any(c.isspace() or c in "\"'\\;$%" for c in word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%")
    return f'"{escaped}"'


def config_path(cli_path: str | None) -> str:
    """The config the unit's server reads: --config, else $OSNOVA_CONFIG, else /etc/osnova/server.toml."""
    chosen = cli_path or os.environ.get("OSNOVA_CONFIG") or DEFAULT_CONFIG
    return str(Path(chosen).expanduser().absolute())


def unit_for(exec_start: list[str], user: str | None) -> str:
    """The packaged unit with ExecStart= replaced, and a static `user` instead of a dynamic one."""
    lines = []
    for line in packaged_unit().splitlines():
        if line.startswith("ExecStart="):
            line = "ExecStart=" + " ".join(_quoted(word) for word in exec_start)
        elif user is not None and line.startswith("DynamicUser="):
            line = "DynamicUser=no"
        elif user is not None and line.startswith("User="):
            line = f"User={user}"
        elif user is not None and line.startswith("Group="):
            line = f"Group={_primary_group(user)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _primary_group(user: str) -> str:
    """The name of `user`'s primary group; refuses a user this machine does not have."""
    import grp
    import pwd

    try:
        gid = pwd.getpwnam(user).pw_gid
    except KeyError:
        raise CommandError(f"no user {user!r} on this machine; create it (`useradd --system {user}`) or pick another") from None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    """Print the unit for this installation."""
    exec_start = [*program(), "--config", config_path(args.config), "serve"]
    sys.stdout.write(unit_for(exec_start, args.user))
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `systemd-unit`."""
    unit = commands.add_parser(
        "systemd-unit", help="print the systemd unit for this installation",
        description=f"Print the systemd unit for this installation, e.g. "
                    f"`{PROG} systemd-unit > /etc/systemd/system/{UNIT_NAME}`.",
    )
    unit.set_defaults(func=cmd_systemd_unit)
    unit.add_argument("--user", metavar="NAME",
                      help="run as this existing user instead of a dynamic user allocated by systemd")
