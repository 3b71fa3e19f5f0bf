"""Fetching and validating Osnova app manifests, so `apps.install` only ever stores a checked one.

Every fetch is bounded in size, time and redirects, and every failure is an `RpcError` whose
message names the URI or path and a short reason, never a byte of what was read: a manifest URI
may point at a file or server holding secrets.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import importlib.resources
import json
import logging
import os
import re
import socket
import ssl
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import (
    SplitResult,
    unquote,
    unquote_to_bytes,
    urljoin,
    urlsplit,
    urlunsplit,
)

import aiohttp

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

from osnova_server.errors import (
    FetchFailed,
    Forbidden,
    ManifestInvalid,
    UnsupportedScheme,
)
from osnova_server.services.breaker import HostBreakers
from osnova_server.tracing import Tracing

_LOGGER = logging.getLogger(__name__)

SCHEMA_RESOURCE: Final = "schemas/osnova-manifest.schema.json"
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
MAX_MESSAGE_ERRORS: Final = 3
MAX_DATA_ERRORS: Final = 20
MAX_DISPLAY_CHARS: Final = 200
MAX_VALUE_REPR_CHARS: Final = 60
READ_CHUNK: Final = 65_536
# A bare address, optionally with path segments, and never a `..` segment: the gateway URL is
# built by string joining, so the address must not be able to climb out of the gateway's path.
_ANT_ADDRESS: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*(/[A-Za-z0-9._~-]+)*")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """What a manifest fetch may do; built per request, since `allow_file` depends on the token."""

    allow_file: bool
    allow_http: bool
    ant_gateway: str
    timeout: float = 10.0
    max_bytes: int = 1_048_576
    max_redirects: int = 3
    ssl_context: ssl.SSLContext | None = None
    # One circuit per host for every fetch of this server; None fetches without one.
    breakers: HostBreakers | None = None
    # With tracing on, each http(s) fetch is a span: host, status, bytes; never the query.
    tracing: Tracing | None = None


class HostFailure(FetchFailed):
    """The host did not answer properly (no connection, timeout, 5xx): counts against its circuit."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest that passed the schema, with the fields the server uses lifted out of `raw`."""

    id: str
    name: str
    version: str
    description: str
    icon_uri: str
    components: list[dict[str, Any]]
    raw: dict[str, Any]


async def fetch_manifest(uri: str, policy: FetchPolicy) -> bytes:
    """Return the raw bytes behind `uri`, enforcing the scheme, size, time and redirect policy."""
    parts = _split(uri)
    scheme = parts.scheme
    if scheme == "file":
        if not policy.allow_file:
            # Checked before the path is looked at, so a device token learns nothing about it.
            raise Forbidden(
                "file:// manifest URIs are only allowed for admin tokens; "
                "serve the manifest over https:// instead"
            )
        return await _fetch_file(parts, policy)
    if scheme == "ant":
        return await _fetch_http(_ant_gateway_url(uri, policy), policy)
    if scheme in ("http", "https"):
        return await _fetch_http(uri, policy)
    if not scheme:
        shown = _display(uri.strip()) or "(empty)"
        raise UnsupportedScheme(
            f"manifest URI {shown} has no scheme; use an https:// URI"
        )
    raise UnsupportedScheme(
        f"manifest URI scheme {_shorten(scheme)!r} is not supported; use an https:// URI"
    )


def parse_manifest(raw: bytes) -> Manifest:
    """Decode `raw` as JSON and validate it against the Osnova manifest schema."""
    document = _decode_json(raw)
    errors = sorted(_validator().iter_errors(document), key=_error_sort_key)
    if errors:
        described = [(_json_path(error), _reason(error)) for error in errors]
        summary = "; ".join(
            f"{path}: {reason}" for path, reason in described[:MAX_MESSAGE_ERRORS]
        )
        more = len(described) - MAX_MESSAGE_ERRORS
        if more > 0:
            summary += f"; and {more} more"
        raise ManifestInvalid(
            f"manifest invalid: {summary}",
            data={
                "errors": [
                    {"path": path, "message": reason}
                    for path, reason in described[:MAX_DATA_ERRORS]
                ]
            },
        )
    assert isinstance(document, dict)  # the schema requires an object
    return Manifest(
        id=document["id"],
        name=document["name"],
        version=document["version"],
        description=document["description"],
        icon_uri=document["iconUri"],
        components=document["components"],
        raw=document,
    )


# --- URIs -------------------------------------------------------------------------------------


def _split(uri: str) -> SplitResult:
    """Split `uri`, treating anything urllib cannot parse as an unsupported URI."""
    try:
        return urlsplit(uri.strip())
    except ValueError:
        raise UnsupportedScheme(
            f"manifest URI {_display(uri)} is not a valid URI"
        ) from None


def _display(uri: str) -> str:
    """Return `uri` fit for a message: no user info, no query or fragment, bounded length."""
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc.rpartition("@")[2]
        shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        if parts.query:
            # Signed URLs carry credentials in the query; say that there was one, not what.
            shown += "?…"
    except ValueError:
        shown = uri
    return _shorten(shown)


def _shorten(text: str, limit: int = MAX_DISPLAY_CHARS) -> str:
    """Cut `text` to `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ant_gateway_url(uri: str, policy: FetchPolicy) -> str:
    """Map `ant://ADDRESS` to the configured HTTP gateway's URL for that address."""
    if not policy.ant_gateway:
        raise UnsupportedScheme(
            "ant:// manifest URIs need an Autonomi gateway; set [apps] ant_gateway"
        )
    address = uri.strip()[len("ant://") :]
    if not _ANT_ADDRESS.fullmatch(address) or ".." in address.split("/"):
        raise UnsupportedScheme(
            f"manifest URI {_display(uri)} is not a valid ant:// address"
        )
    return f"{policy.ant_gateway.rstrip('/')}/{address}"


def _check_http_scheme(
    url: str, policy: FetchPolicy, *, previous: str | None = None
) -> None:
    """Refuse `url` unless its scheme may be fetched (for a redirect, coming from `previous`)."""
    parts = _split(url)
    if (
        previous is not None
        and urlsplit(previous).scheme == "https"
        and parts.scheme == "http"
    ):
        raise FetchFailed(f"refusing redirect from https to http ({_display(url)})")
    if parts.scheme == "http" and not policy.allow_http:
        raise UnsupportedScheme(
            f"http:// manifest URIs are disabled ({_display(url)}); "
            "use https:// or set [apps] allow_http = true"
        )
    if parts.scheme not in ("http", "https"):
        what = "manifest URI" if previous is None else "refusing redirect to"
        raise UnsupportedScheme(
            f"{what} {_display(url)}: scheme {_shorten(parts.scheme)!r} is not supported"
        )
    if not parts.hostname:
        raise UnsupportedScheme(f"manifest URI {_display(url)} has no host")


def _size_text(max_bytes: int) -> str:
    """Say `max_bytes` the way a person would: 1 MiB, 64 KiB or 1000 bytes."""
    if max_bytes and max_bytes % 1_048_576 == 0:
        return f"{max_bytes // 1_048_576} MiB"
    if max_bytes and max_bytes % 1024 == 0:
        return f"{max_bytes // 1024} KiB"
    return f"{max_bytes} bytes"


def _timeout_failure(shown: str, policy: FetchPolicy) -> HostFailure:
    """Build the error for a fetch that ran out of time."""
    return HostFailure(f"fetching {shown} timed out after {policy.timeout:g} s")


def _too_large(shown: str, policy: FetchPolicy) -> NoReturn:
    """Raise the error for a manifest over the size limit."""
    raise FetchFailed(f"manifest {shown} is larger than {_size_text(policy.max_bytes)}")


# --- file:// ----------------------------------------------------------------------------------


async def _fetch_file(parts: SplitResult, policy: FetchPolicy) -> bytes:
    """Read a local manifest in a worker thread, bounded by the same size and time as HTTP."""
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise UnsupportedScheme(
            "file:// manifest URIs must name an absolute local path, like file:///srv/app.json"
        )
    if parts.query or parts.fragment:
        raise UnsupportedScheme("file:// manifest URIs take no query or fragment")
    path = unquote_to_bytes(parts.path)
    shown = _shorten(unquote(parts.path, errors="replace"))
    try:
        async with asyncio.timeout(policy.timeout):
            data = await asyncio.to_thread(_read_file, path, shown, policy)
    except TimeoutError:
        raise _timeout_failure(shown, policy) from None
    _LOGGER.debug("Read manifest file %s (%d bytes)", shown, len(data))
    return data


def _read_file(path: bytes, shown: str, policy: FetchPolicy) -> bytes:
    """Read at most `policy.max_bytes` from a regular file, never blocking on FIFOs or devices."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except ValueError:  # an embedded NUL byte
        raise UnsupportedScheme(f"manifest path {shown} is not a valid path") from None
    except OSError as exc:
        raise FetchFailed(_file_error(shown, exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FetchFailed(f"manifest file {shown} is a directory")
        if not stat.S_ISREG(mode):
            raise FetchFailed(f"manifest file {shown} is not a regular file")
        chunks: list[bytes] = []
        total = 0
        # Size is checked while reading, not from stat: /proc files report 0 and files grow.
        while total <= policy.max_bytes:
            chunk = os.read(fd, min(READ_CHUNK, policy.max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > policy.max_bytes:
            _too_large(shown, policy)
        return b"".join(chunks)
    except OSError as exc:
        raise FetchFailed(_file_error(shown, exc)) from None
    finally:
        os.close(fd)


def _file_error(shown: str, exc: OSError) -> str:
    """Describe an OS error on a manifest file without the exception's own text."""
    if exc.errno == errno.ENOENT:
        return f"manifest file {shown} not found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied reading manifest file {shown}"
    if exc.errno == errno.ELOOP:
        return f"manifest file {shown} is a symbolic link loop"
    if exc.errno == errno.EISDIR:
        return f"manifest file {shown} is a directory"
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return f"cannot read manifest file {shown}: {reason}"


# --- http:// and https:// ---------------------------------------------------------------------


async def _fetch_http(url: str, policy: FetchPolicy) -> bytes:
    """GET `url` through the circuit of its host, if the policy has breakers."""
    _check_http_scheme(url, policy)
    host = urlsplit(url).hostname or ""
    if policy.tracing is None:
        return await _fetch_guarded(host, url, policy)
    attributes = {"server.address": host, "url.scheme": urlsplit(url).scheme}
    with policy.tracing.span("manifest.fetch", "client", attributes) as span:
        data = await _fetch_guarded(host, url, policy)
        span.set_attribute("osnova.manifest.bytes", len(data))
        return data


async def _fetch_guarded(host: str, url: str, policy: FetchPolicy) -> bytes:
    """Fetch through the host's circuit, when the policy has breakers."""
    if policy.breakers is None:
        return await _fetch_bounded(url, policy)
    return await policy.breakers.call(
        host, lambda: _fetch_bounded(url, policy), _is_host_failure
    )


def _is_host_failure(exc: BaseException) -> bool:
    """Whether a failed fetch says the host is in trouble (rather than the request is wrong)."""
    return isinstance(exc, HostFailure)


async def _fetch_bounded(url: str, policy: FetchPolicy) -> bytes:
    """GET `url`, following at most `policy.max_redirects` redirects, all within the timeout."""
    shown = _display(url)
    try:
        async with asyncio.timeout(policy.timeout):
            return await _fetch_hops(url, policy)
    except TimeoutError:
        # aiohttp's own timeouts subclass TimeoutError too, so this covers every hop.
        raise _timeout_failure(shown, policy) from None
    except aiohttp.ClientError as exc:
        raise HostFailure(
            f"fetching {shown} failed: {_client_error_reason(exc)}"
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise HostFailure(f"fetching {shown} failed: {reason}") from None


async def _fetch_hops(url: str, policy: FetchPolicy) -> bytes:
    """Follow redirects by hand, so each hop gets the scheme policy and the hop count is ours."""
    connector = aiohttp.TCPConnector(
        ssl=policy.ssl_context if policy.ssl_context is not None else True
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=policy.timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        # A compressed body would escape the size limit; ask for none and decode none.
        auto_decompress=False,
        headers={"Accept": "application/json", "Accept-Encoding": "identity"},
    ) as session:
        for _hop in range(policy.max_redirects + 1):
            async with session.get(url, allow_redirects=False) as response:
                if policy.tracing is not None:
                    policy.tracing.current_span().set_attribute(
                        "http.response.status_code", response.status
                    )
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchFailed(
                            f"{_display(url)} answered HTTP {response.status} without a Location"
                        )
                    target = urljoin(url, location)
                    _check_http_scheme(target, policy, previous=url)
                    _LOGGER.debug(
                        "Manifest %s redirects to %s", _display(url), _display(target)
                    )
                    url = target
                    continue
                if not 200 <= response.status < 300:
                    # 5xx and 429 say the host is unwell; any other status is about this URL.
                    unwell = response.status >= 500 or response.status == 429
                    raise (HostFailure if unwell else FetchFailed)(
                        f"fetching {_display(url)} failed: HTTP {response.status}"
                    )
                data = await _read_body(response, _display(url), policy)
                _LOGGER.debug(
                    "Fetched manifest %s (%d bytes)", _display(url), len(data)
                )
                return data
    raise FetchFailed(
        f"fetching {_display(url)} failed: more than {policy.max_redirects} redirects"
    )


async def _read_body(
    response: aiohttp.ClientResponse, shown: str, policy: FetchPolicy
) -> bytes:
    """Read the body, stopping as soon as it is known to exceed `policy.max_bytes`."""
    length = response.content_length
    if length is not None and length > policy.max_bytes:
        response.close()
        _too_large(shown, policy)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(READ_CHUNK):
        chunks.append(chunk)
        total += len(chunk)
        if total > policy.max_bytes:
            # Drop the connection rather than drain it: the sender may never stop.
            response.close()
            _too_large(shown, policy)
    return b"".join(chunks)


def _client_error_reason(exc: aiohttp.ClientError) -> str:
    """Give a short reason for an aiohttp failure, without hostnames' resolver chatter."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        verify = getattr(exc.certificate_error, "verify_message", None)
        return f"TLS certificate not trusted ({verify or 'verification failed'})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return f"cannot resolve host {exc.host}"
        if os_error.errno:
            return f"cannot connect to {exc.host}:{exc.port}: {os.strerror(os_error.errno)}"
        return f"cannot connect to {exc.host}:{exc.port}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body was cut off or malformed"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return type(exc).__name__


# --- JSON and schema --------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN and Infinity, which are not JSON and could not be served back as JSON."""
    raise ManifestInvalid(f"manifest is not valid JSON: {name} is not a JSON number")


def _decode_json(raw: bytes) -> Any:
    """Parse `raw` as UTF-8 JSON; failures say where, never what."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # The codec's own message quotes the offending byte.
        raise ManifestInvalid(
            f"manifest is not valid JSON: not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        # `msg` is the parser's fixed wording ("Expecting value"); `str(exc)` is the same plus
        # the position, and neither contains the document.
        raise ManifestInvalid(
            f"manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise ManifestInvalid("manifest is not valid JSON: nested too deeply") from None
    except ValueError:  # an integer longer than sys.get_int_max_str_digits()
        raise ManifestInvalid(
            "manifest is not valid JSON: a number is too long"
        ) from None


@functools.cache
def _validator() -> Draft202012Validator:
    """Load the shipped schema once and build its validator.

    jsonschema is imported here, on the first manifest checked, not with the server: its import
    took 38.6 ms of `import osnova_server.server` (python -X importtime).
    """
    from jsonschema import Draft202012Validator

    text = (importlib.resources.files("osnova_server") / SCHEMA_RESOURCE).read_text(
        "utf-8"
    )
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _error_sort_key(
    error: ValidationError,
) -> tuple[tuple[tuple[int, int, str], ...], int]:
    """Order errors by instance path (indices numerically), then by schema position."""
    path = tuple(
        (0, item, "") if isinstance(item, int) else (1, 0, str(item))
        for item in error.absolute_path
    )
    return path, len(error.absolute_schema_path)


def _json_path(error: ValidationError, extra: Iterable[str | int] = ()) -> str:
    """Render an error's instance path as `$.components[0].kind`."""
    out = "$"
    for item in (*error.absolute_path, *extra):
        if isinstance(item, int):
            out += f"[{item}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item):
            out += f".{item}"
        else:
            out += f"[{json.dumps(item)}]"
    return out


def _reason(error: ValidationError) -> str:
    """Say which rule failed in the schema's terms only, so no manifest value is ever echoed."""
    rule = error.validator
    value: Any = error.validator_value
    if rule == "required":
        return str(
            error.message
        )  # "'id' is a required property": the name is the schema's
    if rule == "type":
        return (
            f"must be of type {value if isinstance(value, str) else ' or '.join(value)}"
        )
    if rule == "enum":
        return f"must be one of {_repr_short(value)}"
    if rule == "const":
        return f"must be {_repr_short(value)}"
    if rule == "pattern":
        return f"does not match {_repr_short(value)}"
    if rule == "minLength":
        return (
            "must not be empty"
            if value == 1
            else f"must be at least {value} characters"
        )
    if rule == "maxLength":
        return f"must be at most {value} characters"
    if rule == "minItems":
        return (
            "must not be empty" if value == 1 else f"must have at least {value} items"
        )
    if rule == "maxItems":
        return f"must have at most {value} items"
    if rule == "not" and isinstance(value, dict) and set(value) == {"required"}:
        kind = error.instance.get("kind") if isinstance(error.instance, dict) else None
        names = ", ".join(repr(name) for name in value["required"])
        if kind in ("frontend", "backend"):
            return f"{names} is not allowed on {kind} components"
        return f"{names} is not allowed here"
    return f"fails the {rule!r} rule of the schema"


def _repr_short(value: Any) -> str:
    """Repr a schema value, cut to a readable length."""
    return _shorten(repr(value), MAX_VALUE_REPR_CHARS)
