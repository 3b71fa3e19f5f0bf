"""`status`: how the running server is doing, in one screen for people or one object for scripts."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from osnova_server.cli.common import EXIT_OK, load_config, local_url, print_json, table, with_server

if TYPE_CHECKING:
    from osnova_server.client import OsnovaClient
    from osnova_server.config import Config


async def gather_status(config: Config, client: OsnovaClient) -> dict[str, Any]:
    """`status.get` and the rest a user asks about, read from the server in one go."""
    health, identity, devices, apps, address, counts = await asyncio.gather(
        client.call("status.get"), client.call("identity.status"), client.call("devices.list"),
        client.call("apps.list"), client.call("config.getServer"), client.get_json("/status"),
    )
    revoked = sum(1 for device in devices if device["revoked"])
    return {
        **health,
        "address": address,
        "local_url": local_url(config),
        "tls": _tls_summary(config),
        "fingerprint": _fingerprint(config, identity),
        "devices": {"paired": len(devices), "active": len(devices) - revoked, "revoked": revoked},
        "apps": len(apps),
        "connections": counts["connections"],
        "max_connections": counts["max_connections"],
        "active_sessions": counts["active_sessions"],
    }


def _tls_summary(config: Config) -> dict[str, Any]:
    """Whether TLS is on and when the served certificate expires (read from its file on this machine)."""
    if not config.tls.enabled:
        return {"enabled": False, "certificate_expires_at": None}
    from osnova_server.security.tls import TlsError, certificate_not_after
    from osnova_server.timestamps import rfc3339

    try:
        expires = rfc3339(certificate_not_after(Path(config.tls.cert_path)))
    except TlsError as err:
        return {"enabled": True, "certificate_expires_at": None, "certificate_problem": str(err)}
    return {"enabled": True, "certificate_expires_at": expires}


def _fingerprint(config: Config, identity: dict[str, Any]) -> str | None:
    """The fingerprint pairing shows: the certificate's under TLS, else the server identity's."""
    if config.tls.enabled:
        from osnova_server.security.tls import TlsError, certificate_fingerprint

        try:
            return certificate_fingerprint(Path(config.tls.cert_path))
        except TlsError:
            return None
    fingerprint = identity.get("fingerprint")
    return fingerprint if isinstance(fingerprint, str) else None


def duration(seconds: float) -> str:
    """A span of time as a person says it: `3 d 4 h`, `2 h 13 min`, `5 min 2 s`, `12 s`."""
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def _days_until(timestamp: str) -> int:
    """Whole days from now until an RFC 3339 UTC timestamp (negative once past)."""
    when = dt.datetime.fromisoformat(timestamp)
    return (when - dt.datetime.now(dt.UTC)).days


def render(status: dict[str, Any]) -> list[str]:
    """The human summary, one line per subject and a table of services."""
    tls = status["tls"]
    if not tls["enabled"]:
        tls_line = "off"
    elif tls["certificate_expires_at"] is None:
        tls_line = f"on; {tls.get('certificate_problem', 'certificate unreadable')}"
    else:
        tls_line = f"on; certificate expires {tls['certificate_expires_at']} (in {_days_until(tls['certificate_expires_at'])} days)"
    devices = status["devices"]
    address = status["address"] or "(not set; pairing derives one from the bind address)"
    connections = (
        f"{status['connections']} of {status['max_connections']} WebSockets, "
        f"{status['active_sessions']} devices seen in the last 5 minutes"
    )
    instance = [f"instance      {status['instance']}"] if status.get("instance") else []
    return [
        f"osnova-server {status['version']}: {status['status']}",
        *instance,
        f"uptime        {duration(status['uptime'])}",
        f"address       {address}",
        f"this machine  {status['local_url']}",
        f"tls           {tls_line}",
        f"fingerprint   {status['fingerprint'] or '-'}",
        f"devices       {devices['paired']} paired: {devices['active']} active, {devices['revoked']} revoked",
        f"apps          {status['apps']} installed",
        f"connections   {connections}",
        "services",
    ]


def cmd_status(args: argparse.Namespace) -> int:
    """Print how the running server is doing; exit 1 when it does not answer."""
    config = load_config(args)

    async def read(client: OsnovaClient) -> dict[str, Any]:
        return await gather_status(config, client)

    status = with_server(config, read)
    if args.json:
        print_json(status)
        return EXIT_OK
    for line in render(status):
        print(line)
    table([["  NAME", "KIND", "STATUS"]] + [[f"  {s['name']}", s["kind"], s["status"]] for s in status["services"]])
    if status.get("instances"):
        # Cluster mode: every process the shared Redis knows to be alive.
        print("instances")
        table([["  NAME", "ADDRESS", "VERSION", "UPTIME", "WEBSOCKETS"]] + [
            [f"  {i['name']}", i["address"], i["version"], duration(i["uptime"]), str(i["connections"])]
            for i in status["instances"]
        ])
    return EXIT_OK


def register(commands: Any) -> None:
    """Add `status`."""
    status = commands.add_parser("status", help="show how the running server is doing",
                                 description="Show how the running server is doing; exit 1 if it does not answer.")
    status.set_defaults(func=cmd_status)
    status.add_argument("--json", action="store_true", help="print status.get and the rest as one JSON object")
