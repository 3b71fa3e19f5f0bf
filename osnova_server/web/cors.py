"""CORS with aiohttp-cors: only `[cors] allowed_origins` get `Access-Control-Allow-Origin`.

aiohttp-cors looks an origin up in its defaults mapping on every request, so the defaults given
here are a live view of the running config: a SIGHUP that changes `allowed_origins` (the runtime
swaps its config) takes effect on the next request, with no restart and no dropped connection.
`*` is honoured only when configured literally, and then without credentials. Preflights answer
with the whole allowed set (`GET, POST, OPTIONS`; `Content-Type, Authorization`) rather than
echoing the request, and refuse any other method or header with 403.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

import aiohttp_cors
from aiohttp import hdrs, web
from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

from osnova_server.web.keys import STATE_KEY

ANY_ORIGIN: Final = "*"
ALLOW_METHODS: Final = ("GET", "POST", "OPTIONS")
ALLOW_HEADERS: Final = ("Content-Type", "Authorization")
# Headers a browser script may read from our answers: why it was refused and for how long.
EXPOSE_HEADERS: Final = ("Retry-After", "WWW-Authenticate")
PREFLIGHT_MAX_AGE: Final = 600
_METHODS_VALUE: Final = ", ".join(ALLOW_METHODS)
_HEADERS_VALUE: Final = ", ".join(ALLOW_HEADERS)


def origin_options(origins: Sequence[str]) -> dict[str, aiohttp_cors.ResourceOptions]:
    """The aiohttp-cors options for each configured origin."""
    options: dict[str, aiohttp_cors.ResourceOptions] = {}
    for origin in origins:
        key = origin if origin == ANY_ORIGIN else origin.rstrip("/")
        options[key] = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
            # Credentials with a wildcard would let any web page act as the user.
            allow_credentials=key != ANY_ORIGIN,
            allow_headers=ALLOW_HEADERS,
            allow_methods=ALLOW_METHODS,
            expose_headers=EXPOSE_HEADERS,
            max_age=PREFLIGHT_MAX_AGE,
        )
    return options


class AllowedOrigins(Mapping[str, aiohttp_cors.ResourceOptions]):
    """The CORS options per origin, rebuilt whenever the running config's origin list changes."""

    __slots__ = ("_options", "_origins", "_source")

    def __init__(self, source: Callable[[], Sequence[str]]) -> None:
        self._source = source
        self._origins: Sequence[str] | None = None
        self._options: dict[str, aiohttp_cors.ResourceOptions] = {}

    def _current(self) -> dict[str, aiohttp_cors.ResourceOptions]:
        """The options for the origins configured right now (rebuilt only when they change)."""
        origins = self._source()
        if origins is not self._origins:
            self._options = origin_options(origins)
            self._origins = origins
        return self._options

    def __getitem__(self, origin: str) -> aiohttp_cors.ResourceOptions:
        return self._current()[origin]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


def _complete_answer(request: web.Request, response: web.StreamResponse) -> None:
    """State the whole allowed set on granted preflights; mark origin-dependent answers."""
    headers = response.headers
    if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in headers and request.method == hdrs.METH_OPTIONS:
        headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = _METHODS_VALUE
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = _HEADERS_VALUE
    # The answer depends on the Origin (echoed or not), so caches must key on it.
    vary = headers.get(hdrs.VARY)
    if vary is None:
        headers[hdrs.VARY] = hdrs.ORIGIN
    elif hdrs.ORIGIN.lower() not in vary.lower():
        headers[hdrs.VARY] = f"{vary}, {hdrs.ORIGIN}"


def setup_cors(app: web.Application) -> None:
    """Enable CORS on every route added so far, reading origins from the running config."""
    state = app[STATE_KEY]
    origins = AllowedOrigins(lambda: state.runtime.config.cors.allowed_origins)
    hooks = app.on_response_prepare
    before = len(hooks)
    cors = aiohttp_cors.CorsConfig(app, router_adapter=ResourcesUrlDispatcherRouterAdapter(app.router, origins))
    # aiohttp-cors hooks itself onto every answer, and on an answer to a request without Origin
    # (curl, the apps, the CLI: nearly all of them) it does nothing, but only after looking up
    # the route's CORS config (a tenth of the cost of a trivial call outside aiohttp in the
    # profile of issue 15). Its hook is taken off here and run from ours, for Origin requests only.
    library_hooks = tuple(hooks[before:])
    del hooks[before:]
    for resource in list(app.router.resources()):
        cors.add(resource)

    async def cors_answer(request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp-cors's answer headers, then ours, on the answers to requests that carry Origin."""
        if hdrs.ORIGIN not in request.headers:
            return
        for hook in library_hooks:
            await hook(request, response)
        _complete_answer(request, response)

    hooks.append(cors_answer)
