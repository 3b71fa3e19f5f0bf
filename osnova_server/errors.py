"""The one error type of osnova-server.

Services raise a subclass of `RpcError` when a request cannot be served; the JSON-RPC protocol
layer is the one place that turns it into an answer. Keeping the code on the exception means a
service never needs to know about HTTP or JSON-RPC framing, only which kind of failure it is.
Messages are shown to clients: they must never contain secrets, file contents or tracebacks.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
NOT_FOUND: Final = -32001
UNAUTHORIZED: Final = -32002
FORBIDDEN: Final = -32003
MANIFEST_INVALID: Final = -32004
UNSUPPORTED_SCHEME: Final = -32005
FETCH_FAILED: Final = -32006
ANSWER_TOO_LARGE: Final = -32007
RATE_LIMITED: Final = -32029


class RpcError(Exception):
    """A failure with a JSON-RPC error code, a client-safe message and optional data."""

    code: ClassVar[int] = INTERNAL_ERROR
    default_message: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-RPC `error` member."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(RpcError):
    """The request was not valid JSON."""

    code = PARSE_ERROR
    default_message = "Parse error"


class InvalidRequest(RpcError):
    """The JSON was not a valid JSON-RPC 2.0 request."""

    code = INVALID_REQUEST
    default_message = "Invalid Request"


class MethodNotFound(RpcError):
    """No method is registered under that name."""

    code = METHOD_NOT_FOUND
    default_message = "Method not found"


class InvalidParams(RpcError):
    """A parameter is missing, unexpected or of the wrong type; the message names it."""

    code = INVALID_PARAMS
    default_message = "Invalid params"


class InternalError(RpcError):
    """Something unexpected failed; details go to the log, never to the client."""

    code = INTERNAL_ERROR


class NotFound(RpcError):
    """The thing the request names does not exist."""

    code = NOT_FOUND
    default_message = "Not found"


class Unauthorized(RpcError):
    """A pairing code or refresh token was wrong, used, expired or invalidated."""

    code = UNAUTHORIZED
    default_message = "Unauthorized"


class Forbidden(RpcError):
    """The caller is known but may not do this."""

    code = FORBIDDEN
    default_message = "Forbidden"


class ManifestInvalid(RpcError):
    """An app manifest is not JSON or does not match the Osnova manifest schema."""

    code = MANIFEST_INVALID
    default_message = "Manifest invalid"


class UnsupportedScheme(RpcError):
    """A manifest URI uses a scheme this server will not fetch."""

    code = UNSUPPORTED_SCHEME
    default_message = "Unsupported URI scheme"


class FetchFailed(RpcError):
    """A manifest could not be fetched (missing, too large, too slow, refused)."""

    code = FETCH_FAILED
    default_message = "Fetch failed"


class AnswerTooLarge(RpcError):
    """A call's answer would take the whole answer past `[limits] max_response_bytes`; it was not sent."""

    code = ANSWER_TOO_LARGE
    default_message = "Answer too large"


class RateLimited(RpcError):
    """The caller is over its rate limit; nothing ran."""

    code = RATE_LIMITED
    default_message = "Rate limited"
