"""Charge a request against its client's token bucket; refuse with 429 when it is empty."""

from __future__ import annotations

from aiohttp import web

from osnova_server.security.ratelimit import retry_after_header
from osnova_server.security.tokens import Claims
from osnova_server.web.errors import json_error
from osnova_server.web.keys import CLAIMS_KEY, REMOTE_KEY, STATE_KEY


def bucket_key(claims: Claims | None, remote: str) -> str:
    """The bucket: the device for device tokens, the token for admin ones, else the address."""
    if claims is None:
        return f"ip:{remote}"
    if claims.device_id is not None:
        return f"device:{claims.device_id}"
    return f"token:{claims.jti}"


async def charge(request: web.Request, cost: int) -> web.Response | None:
    """Take `cost` tokens for this request's client; a 429 answer if there are not enough."""
    limiter = request.app[STATE_KEY].runtime.limiter
    wait = await limiter.acquire(bucket_key(request[CLAIMS_KEY], request[REMOTE_KEY]), cost)
    if wait <= 0:
        return None
    return json_error(
        429, "rate limit exceeded; slow down", {"Retry-After": retry_after_header(wait)},
        retry_after=float(retry_after_header(wait)),
    )
