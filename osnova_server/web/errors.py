"""Turn every refusal and failure into a JSON answer; never a traceback, never an HTML page.

web/pipeline.py wraps every check below this one and the handler in the two answers here.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

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


def refusal_answer(err: web.HTTPException) -> web.Response | None:
    """The JSON form of a refusal raised below; None for what goes out as raised (redirects, JSON)."""
    if err.status < 400 or err.content_type == "application/json":
        return None
    headers = {k: v for k, v in err.headers.items() if k.lower() not in ("content-type", "content-length")}
    return json_error(err.status, _explanation(err), headers)


def failure_answer(request: web.BaseRequest) -> web.Response:
    """Log the error being handled (a bug) with its traceback; the client gets a bare 500.

    Call it from the `except` block: the traceback logged is the one being handled.
    """
    _LOGGER.exception("unhandled error serving %s %s", request.method, request.path)
    return json_error(500, "Internal Server Error")
