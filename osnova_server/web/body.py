"""The request body: no content encodings (415), whole within `body_timeout` (408), read once.

A `Content-Encoding` other than identity is refused before a byte of the body is read, and the
server never inflates anything (aiohttp's decompression is off in app.py), so a small gzip bomb
costs no more than its own bytes. Otherwise the body is read here, within `[limits]
body_timeout` seconds and `[limits] max_body_bytes` (413), before any handler runs; aiohttp keeps
it, so the handler's own `request.read()` returns it at once. A client that leaves in the middle
of its body is a debug line, not an error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from osnova_server.web.errors import json_error

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

_LOGGER = logging.getLogger(__name__)

IDENTITY: Final = "identity"


def _closing(response: web.Response) -> web.Response:
    """The answer, sent with Connection: close (the rest of the body is not waited for)."""
    response.force_close()
    return response


def unsupported_encoding(value: str) -> bool:
    """Whether a Content-Encoding header names anything but identity."""
    codings = [coding.strip().lower() for coding in value.split(",")]
    return any(coding not in ("", IDENTITY) for coding in codings)


async def read_body(request: web.Request, runtime: Runtime) -> web.Response | None:
    """Read the request's body, if it has one, within its time; the refusal if it cannot be."""
    if not request.body_exists:
        return None
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None and unsupported_encoding(encoding):
        return _closing(json_error(
            415, f"request bodies must not be compressed (Content-Encoding: {encoding[:40]}); send plain JSON",
        ))
    timeout = runtime.config.limits.body_timeout
    try:
        if request.content.is_eof():  # it came with the headers (most do): no clock needed
            await request.read()
        else:
            async with asyncio.timeout(timeout):
                await request.read()
    except TimeoutError:
        _LOGGER.debug("%s sent no whole body within %g s", request.remote, timeout)
        return _closing(json_error(408, f"the request body did not arrive within {timeout:g} s; send it at once"))
    except (ConnectionError, RequestPayloadError) as err:
        _LOGGER.debug("%s left in the middle of its request body: %s", request.remote, err)
        return _closing(json_error(400, "the request body ended early"))
    return None
