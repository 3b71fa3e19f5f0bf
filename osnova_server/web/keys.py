"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

if TYPE_CHECKING:
    from osnova_server.metrics import Metrics
    from osnova_server.rpc.protocol import Dispatcher
    from osnova_server.runtime import Runtime
    from osnova_server.security.tokens import Claims


class ServerState:
    """The application's live parts; filled at startup, after the app is frozen.

    aiohttp forbids changing an application's items once it has started, and the runtime
    only exists from startup on, so the app holds this one mutable box instead.
    """

    __slots__ = ("runtime", "dispatcher", "metrics")

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.runtime: Runtime
        self.dispatcher: Dispatcher


STATE_KEY: Final = web.AppKey("state", ServerState)

# The client's address after trusted proxies are accounted for (web/forwarded.py).
REMOTE_KEY: Final = web.RequestKey("remote", str)
# The verified claims of the request's bearer token, or None without one (web/auth.py).
CLAIMS_KEY: Final[web.RequestKey[Claims | None]] = web.RequestKey("claims")
# The raw bearer token, when one was given.
TOKEN_KEY: Final[web.RequestKey[str | None]] = web.RequestKey("token")
