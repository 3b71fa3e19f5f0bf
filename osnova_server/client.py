"""A small async client of osnova-server for the CLI, scripts and tests (HTTP and WebSocket)."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import aiohttp

from osnova_server.rpc import codec


class RpcCallError(Exception):
    """The server answered a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class TransportError(Exception):
    """The server refused the request before JSON-RPC (401, 403, 413, 429, ...) or is unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachable(TransportError):
    """Nothing answered at the address: the connection was refused, reset or timed out."""


class UntrustedCertificate(TransportError):
    """The TLS handshake failed because the server presents a certificate the client does not trust."""


class OsnovaClient:
    """Calls methods on one server with one token; use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        ssl_context: ssl.SSLContext | bool | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._ids = itertools.count(1)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    def _headers(self) -> dict[str, str]:
        """The Authorization header, when there is a token."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def post(self, payload: Any) -> Any:
        """POST a raw JSON-RPC payload; return the decoded answer (None for 204)."""
        try:
            async with self._session.post(
                f"{self.base_url}/rpc", data=codec.dumps(payload), headers=self._headers(), ssl=self.ssl,
            ) as response:
                body = await response.read()
                if response.status == 204:
                    return None
                if response.status != 200:
                    try:
                        reason = codec.loads(body).get("error", response.reason)
                    except (ValueError, AttributeError):
                        reason = response.reason
                    raise TransportError(f"HTTP {response.status}: {reason}", response.status)
                return self._decode(body)
        except aiohttp.ClientError as err:
            raise self._failure(err) from None
        except TimeoutError:
            raise ServerUnreachable(f"no answer from {self.base_url} in time") from None

    async def get_json(self, path: str) -> Any:
        """GET a JSON route such as /status; any refusal or outage is a TransportError."""
        try:
            async with self._session.get(f"{self.base_url}{path}", headers=self._headers(), ssl=self.ssl) as response:
                if response.status != 200:
                    raise TransportError(f"HTTP {response.status} from {path}", response.status)
                return self._decode(await response.read())
        except aiohttp.ClientError as err:
            raise self._failure(err) from None
        except TimeoutError:
            raise ServerUnreachable(f"no answer from {self.base_url} in time") from None

    def _decode(self, body: bytes) -> Any:
        """A 200 answer's JSON; anything else on the port (a web page, another program) is a TransportError."""
        try:
            return codec.loads(body)
        except ValueError:
            raise TransportError(f"{self.base_url} did not answer with JSON; is another program on that port?") from None

    def _failure(self, err: aiohttp.ClientError) -> TransportError:
        """What an aiohttp failure means for the caller: no server, a TLS problem, or a broken answer."""
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            reason = getattr(err.certificate_error, "verify_message", None) or err.certificate_error
            return UntrustedCertificate(f"TLS with {self.base_url} failed: {reason}")
        if isinstance(err, aiohttp.ClientSSLError):
            return TransportError(f"TLS with {self.base_url} failed: {err.os_error}; does it serve TLS?")
        if isinstance(err, aiohttp.ClientConnectionError):
            return ServerUnreachable(f"cannot reach {self.base_url}: {err}")
        # A malformed answer (a bad status line, a body cut short): not an osnova-server, or one that died.
        return TransportError(f"{self.base_url} did not answer as osnova-server does; is another program on that port?")

    async def call(self, method: str, params: Any = None) -> Any:
        """Call one method and return its result, raising RpcCallError on an error answer."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            request["params"] = params
        answer = await self.post(request)
        if not isinstance(answer, dict) or not ("result" in answer or isinstance(answer.get("error"), dict)):
            raise TransportError(f"{self.base_url} did not answer with a JSON-RPC response")
        if "error" in answer:
            error = answer["error"]
            raise RpcCallError(error.get("code", 0), error.get("message", ""), error.get("data"))
        return answer["result"]

    @asynccontextmanager
    async def websocket(self, **kwargs: Any) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """Open /ws with the client's token in the Authorization header."""
        url = self.base_url.replace("http", "ws", 1) + "/ws"
        async with self._session.ws_connect(url, headers=self._headers(), ssl=self.ssl, **kwargs) as socket:
            yield socket
