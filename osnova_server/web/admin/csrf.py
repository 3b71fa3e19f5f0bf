"""Cross-site request forgery: the Origin check and the per-session token of every state change.

Two independent guards. First, where the request came from: browsers send Fetch Metadata
(`Sec-Fetch-Site`) on every request, and only `same-origin` (or `none`, a navigation the user
typed) is admitted; without it the `Origin` header must be ours. A form on another page, even of
the same site (another port of this host), is refused (403) before anything else is looked at,
whatever token it holds. `Origin` alone would not do: under the page's own `Referrer-Policy:
no-referrer` a browser sends `Origin: null` even on the page's own POSTs. A request with neither
header (curl, an old browser) goes on, and then the second guard decides: every POST must carry
the session's CSRF token in `X-CSRF-Token` (Syncthing's model), which another site can neither
read nor set.
"""

from __future__ import annotations

import hmac
from typing import Final

from aiohttp import hdrs, web

CSRF_HEADER: Final = "X-CSRF-Token"
FETCH_SITE_HEADER: Final = "Sec-Fetch-Site"
SAME_ORIGIN_SITES: Final = frozenset({"same-origin", "none"})


def own_origin(request: web.Request) -> str:
    """The origin of this server as the browser addressed it: scheme and Host header."""
    return f"{request.scheme}://{request.host}".lower()


def cross_origin(request: web.Request) -> bool:
    """Whether the browser says the request comes from a page other than this server's own."""
    site = request.headers.get(FETCH_SITE_HEADER)
    if site is not None:
        return site.lower() not in SAME_ORIGIN_SITES
    origin = request.headers.get(hdrs.ORIGIN)
    return origin is not None and origin != "null" and origin.lower() != own_origin(request)


def token_matches(request: web.Request, expected: str) -> bool:
    """Whether `X-CSRF-Token` holds the session's token (compared in constant time)."""
    given = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())
