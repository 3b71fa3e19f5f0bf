"""Turn every refusal and failure into a JSON answer; never a traceback, never an HTML page."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

_LOGGER = logging.getLogger(__name__)


def json_error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """A JSON error body with the given HTTP status."""
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def _explanation(err: web.HTTPException) -> str:
    """The refusal's own explanation (e.g. aiohttp-cors saying which origin), else its reason."""
    text = (err.text or "").strip()
    if not text or text == f"{err.status}: {err.reason}" or len(text) > 300:
        return err.reason
    return text


def setup_errors(app: web.Application) -> None:
    """Install the outermost middleware, which shapes every error answer."""

    @web.middleware
    async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.status < 400 or err.content_type == "application/json":
                raise
            headers = {k: v for k, v in err.headers.items() if k.lower() not in ("content-type", "content-length")}
            return json_error(err.status, _explanation(err), headers)
        except Exception:
            _LOGGER.exception("unhandled error serving %s %s", request.method, request.path)
            return json_error(500, "Internal Server Error")

    app.middlewares.append(errors_middleware)
