"""Refuse banned addresses with 403 on every route, /health and /metrics included.

The check is one dict lookup, so a banned flood is cheap to turn away. Addresses in `[ban]
ignore` are never banned (services/bans.py); loopback is in it by default, which is what keeps
the owner's CLI working. For an owner who takes loopback out of that list, one exception still
keeps them in control: a banned loopback address may present a valid admin token, so that
`osnova-server bans lift` works from the server's own machine even when a misbehaving local
script got loopback banned. LAN addresses never reach the (costlier) token check.
"""

from __future__ import annotations

import ipaddress
import math
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from osnova_server.security.tokens import Scope, TokenInvalid
from osnova_server.timestamps import from_epoch
from osnova_server.web.errors import json_error

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

BEARER_PREFIX: Final = "bearer "


def _is_loopback(address: str) -> bool:
    """Whether `address` is this machine's own."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _holds_admin_token(request: web.Request, runtime: Runtime) -> bool:
    """Whether the request carries a valid admin bearer token."""
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if header[: len(BEARER_PREFIX)].lower() != BEARER_PREFIX:
        return False
    try:
        return runtime.tokens.verify(header[len(BEARER_PREFIX):].strip()).scope is Scope.ADMIN
    except TokenInvalid:
        return False


def ban_refusal(request: web.Request, runtime: Runtime, remote: str) -> web.Response | None:
    """The 403 answer for a request from the banned address `remote`, else None."""
    ban = runtime.bans.banned(remote)
    if ban is None or (_is_loopback(remote) and _holds_admin_token(request, runtime)):
        return None
    wait = max(1, math.ceil(ban.banned_until - runtime.bans.clock()))
    return json_error(
        403,
        f"{remote} is banned until {from_epoch(ban.banned_until)} after too many failed "
        f"authentications; the server's administrator can lift it with `osnova-server bans lift {remote}`",
        {"Retry-After": str(wait)},
    )
