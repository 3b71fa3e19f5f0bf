"""Tests for manifest fetching and validation against real files, sockets and TLS servers."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from osnova_server.errors import (
    FETCH_FAILED,
    FORBIDDEN,
    MANIFEST_INVALID,
    UNSUPPORTED_SCHEME,
    FetchFailed,
    ManifestInvalid,
    RpcError,
)
from osnova_server.services.manifest import (
    FetchPolicy,
    Manifest,
    fetch_manifest,
    parse_manifest,
)
from tests.servers import bound_loopback_socket, stream_forever

SECRET: Final = "hunter2-TOP-SECRET-0xC0FFEE"
TWO_MIB: Final = 2 * 1_048_576
ANT_ADDRESS: Final = "a1b2c3d4e5f6"

VALID: Final[dict[str, Any]] = {
    "id": "ant://0123abcd",
    "name": "Notes",
    "version": "1.2.3",
    "iconUri": "https://example.com/icon.png",
    "description": "Take notes",
    "components": [
        {
            "id": "ant://front",
            "name": "UI",
            "kind": "frontend",
            "version": "1.0.0",
            "platform": "desktop",
        },
        {
            "id": "ant://back",
            "name": "API",
            "kind": "backend",
            "version": "0.1.0",
            "target": "x86_64-unknown-linux-gnu",
        },
    ],
}
VALID_BYTES: Final = json.dumps(VALID).encode()


# --- certificates and servers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and its key, on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Env:
    """Everything a fetch test points at: server base URLs and a directory of test files."""

    https: str
    http: str
    silent: str
    refused: str
    files: Path
    client_ssl: ssl.SSLContext


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Make an EC P-256 self-signed certificate valid for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "osnova test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    files = TlsFiles(cert=directory / "cert.pem", key=directory / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


HTTP_BASE: Final = web.AppKey("http_base", str)


async def _manifest(request: web.Request) -> web.Response:
    """Serve the valid manifest."""
    return web.Response(body=VALID_BYTES, content_type="application/json")


async def _big(request: web.Request) -> web.Response:
    """Serve 2 MiB with a Content-Length, which the client should refuse before reading."""
    return web.Response(body=b" " * TWO_MIB, content_type="application/json")


async def _big_chunked(request: web.Request) -> web.StreamResponse:
    """Stream 2 MiB with no Content-Length, so only counting can catch it."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(TWO_MIB // 65_536):
        await response.write(b" " * 65_536)
    await response.write_eof()
    return response


async def _redirect(request: web.Request) -> web.Response:
    """Redirect `n` times, then serve the manifest."""
    hops = int(request.match_info["n"])
    if hops == 0:
        return await _manifest(request)
    raise web.HTTPFound(f"/redirect/{hops - 1}")


async def _to_http(request: web.Request) -> web.Response:
    """Redirect to the plain-http server, a downgrade."""
    raise web.HTTPFound(f"{request.app[HTTP_BASE]}/manifest.json")


async def _to_file(request: web.Request) -> web.Response:
    """Redirect to a file:// URI, which no hop may follow."""
    raise web.HTTPFound("file:///etc/passwd")


async def _not_found_with_secret(request: web.Request) -> web.Response:
    """Answer 404 with a body that must not reach an error message."""
    return web.Response(status=404, text=SECRET)


async def _secret_body(request: web.Request) -> web.Response:
    """Answer 200 with a non-JSON body that must not reach an error message."""
    return web.Response(text=f"password={SECRET}")


async def _ant(request: web.Request) -> web.Response:
    """Act as an Autonomi gateway holding one address."""
    if request.match_info["address"] != ANT_ADDRESS:
        raise web.HTTPNotFound()
    return await _manifest(request)


def _base(scheme: str, sock: socket.socket) -> str:
    """Return the base URL of a bound socket."""
    return f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Path]:
    """Lay out every file case: valid, oversized, secret, a directory, a loop and a FIFO."""
    (tmp_path / "valid.json").write_bytes(VALID_BYTES)
    (tmp_path / "big.json").write_bytes(b" " * TWO_MIB)
    (tmp_path / "dir").mkdir()
    os.symlink("loop", tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    unreadable = tmp_path / "unreadable.json"
    unreadable.write_bytes(VALID_BYTES)
    unreadable.chmod(0)
    yield tmp_path
    unreadable.chmod(0o600)


@pytest.fixture
async def env(tls_files: TlsFiles, files: Path) -> AsyncIterator[Env]:
    """Start an https and an http site, a server that never answers, and a closed port."""
    https_sock, http_sock = bound_loopback_socket(), bound_loopback_socket()
    app = web.Application()
    app[HTTP_BASE] = _base("http", http_sock)
    app.router.add_get("/manifest.json", _manifest)
    app.router.add_get("/big", _big)
    app.router.add_get("/big-chunked", _big_chunked)
    app.router.add_get("/forever", stream_forever)
    app.router.add_get("/redirect/{n}", _redirect)
    app.router.add_get("/to-http", _to_http)
    app.router.add_get("/to-file", _to_file)
    app.router.add_get("/missing", _not_found_with_secret)
    app.router.add_get("/secret", _secret_body)
    app.router.add_get("/ant/{address}", _ant)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(tls_files.cert, tls_files.key)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.SockSite(runner, https_sock, ssl_context=server_ssl).start()
    await web.SockSite(runner, http_sock).start()

    silent_writers: list[asyncio.StreamWriter] = []

    async def say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Hold the connection open and never answer."""
        silent_writers.append(writer)
        await reader.read()

    silent = await asyncio.start_server(say_nothing, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    closed = bound_loopback_socket()  # bound but never listening: connecting is refused
    try:
        yield Env(
            https=_base("https", https_sock),
            http=_base("http", http_sock),
            silent=f"http://127.0.0.1:{silent_port}",
            refused=_base("http", closed),
            files=files,
            client_ssl=ssl.create_default_context(cafile=str(tls_files.cert)),
        )
    finally:
        closed.close()
        for writer in silent_writers:
            writer.close()
        silent.close()
        await silent.wait_closed()
        await runner.cleanup()


def _policy(env: Env, overrides: dict[str, Any]) -> FetchPolicy:
    """Build a policy trusting the test CA, with `{https}`-style templates filled in."""
    settings: dict[str, Any] = {
        "allow_file": True,
        "allow_http": False,
        "ant_gateway": "",
        "timeout": 5.0,
        "ssl_context": env.client_ssl,
    }
    for key, value in overrides.items():
        settings[key] = _fill(env, value) if isinstance(value, str) else value
    return FetchPolicy(**settings)


def _fill(env: Env, template: str) -> str:
    """Replace `{https}`, `{http}`, `{silent}`, `{refused}` and `{files}` in `template`."""
    return template.format(
        https=env.https,
        http=env.http,
        silent=env.silent,
        refused=env.refused,
        files=env.files,
    )


# --- fetch_manifest ---------------------------------------------------------------------------

FETCH_ERRORS: Final = [
    # (uri, policy overrides, error code, message fragment)
    pytest.param("ftp://example.com/m.json", {}, UNSUPPORTED_SCHEME, "'ftp'", id="ftp"),
    pytest.param(
        "data:application/json,[]", {}, UNSUPPORTED_SCHEME, "'data'", id="data"
    ),
    pytest.param(
        "example.com/m.json", {}, UNSUPPORTED_SCHEME, "has no scheme", id="no-scheme"
    ),
    pytest.param("", {}, UNSUPPORTED_SCHEME, "(empty) has no scheme", id="empty"),
    pytest.param(
        "http://[::1", {}, UNSUPPORTED_SCHEME, "not a valid URI", id="garbage"
    ),
    pytest.param("https://", {}, UNSUPPORTED_SCHEME, "has no host", id="no-host"),
    pytest.param(
        "{http}/manifest.json",
        {},
        UNSUPPORTED_SCHEME,
        "[apps] allow_http = true",
        id="http-disabled",
    ),
    pytest.param(
        "ant://" + ANT_ADDRESS,
        {},
        UNSUPPORTED_SCHEME,
        "[apps] ant_gateway",
        id="ant-no-gateway",
    ),
    pytest.param(
        "ant://../secret",
        {"ant_gateway": "{http}/ant", "allow_http": True},
        UNSUPPORTED_SCHEME,
        "not a valid ant:// address",
        id="ant-climbs-out",
    ),
    pytest.param(
        "ant://" + ANT_ADDRESS,
        {"ant_gateway": "{http}/ant"},
        UNSUPPORTED_SCHEME,
        "allow_http",
        id="ant-http-gateway-without-allow-http",
    ),
    pytest.param(
        "ant://unknown",
        {"ant_gateway": "{http}/ant", "allow_http": True},
        FETCH_FAILED,
        "HTTP 404",
        id="ant-unknown-address",
    ),
    pytest.param(
        "file://{files}/valid.json",
        {"allow_file": False},
        FORBIDDEN,
        "admin tokens",
        id="file-without-allow-file",
    ),
    pytest.param(
        "file://{files}/missing.json",
        {"allow_file": False},
        FORBIDDEN,
        "admin tokens",
        id="file-without-allow-file-hides-existence",
    ),
    pytest.param(
        "file://relative/m.json",
        {},
        UNSUPPORTED_SCHEME,
        "absolute",
        id="file-not-absolute",
    ),
    pytest.param(
        "file://{files}/missing.json", {}, FETCH_FAILED, "not found", id="missing"
    ),
    pytest.param(
        "file://{files}/dir", {}, FETCH_FAILED, "is a directory", id="directory"
    ),
    pytest.param(
        "file://{files}/loop", {}, FETCH_FAILED, "symbolic link loop", id="symlink-loop"
    ),
    pytest.param(
        "file://{files}/fifo", {}, FETCH_FAILED, "not a regular file", id="fifo"
    ),
    pytest.param(
        "file:///dev/zero", {}, FETCH_FAILED, "not a regular file", id="device"
    ),
    pytest.param(
        "file://{files}/big.json", {}, FETCH_FAILED, "larger than 1 MiB", id="file-2mib"
    ),
    pytest.param(
        "file://{files}/valid.json",
        {"max_bytes": 64},
        FETCH_FAILED,
        "larger than 64 bytes",
        id="file-over-custom-limit",
    ),
    pytest.param(
        "{https}/big",
        {},
        FETCH_FAILED,
        "larger than 1 MiB",
        id="https-2mib-content-length",
    ),
    pytest.param(
        "{https}/big-chunked",
        {},
        FETCH_FAILED,
        "larger than 1 MiB",
        id="https-2mib-chunked",
    ),
    pytest.param(
        "{https}/forever",
        {},
        FETCH_FAILED,
        "larger than 1 MiB",
        id="https-sends-forever",
    ),
    pytest.param(
        "{https}/to-http",
        {"allow_http": True},
        FETCH_FAILED,
        "refusing redirect from https to http",
        id="redirect-https-to-http",
    ),
    pytest.param(
        "{https}/redirect/4",
        {},
        FETCH_FAILED,
        "more than 3 redirects",
        id="4-redirects",
    ),
    pytest.param(
        "{https}/redirect/2",
        {"max_redirects": 1},
        FETCH_FAILED,
        "more than 1 redirects",
        id="over-custom-redirect-limit",
    ),
    pytest.param(
        "{https}/to-file", {}, UNSUPPORTED_SCHEME, "'file'", id="redirect-to-file"
    ),
    pytest.param("{https}/missing", {}, FETCH_FAILED, "HTTP 404", id="https-404"),
    pytest.param(
        "{silent}/manifest.json",
        {"allow_http": True, "timeout": 0.5},
        FETCH_FAILED,
        "timed out after 0.5 s",
        id="never-answers",
    ),
    pytest.param(
        "{refused}/manifest.json",
        {"allow_http": True},
        FETCH_FAILED,
        "Connection refused",
        id="connection-refused",
    ),
    pytest.param(
        "{https}/manifest.json",
        {"ssl_context": None},
        FETCH_FAILED,
        "TLS certificate not trusted",
        id="untrusted-certificate",
    ),
    pytest.param(
        "https://no-such-host.invalid/m.json",
        {},
        FETCH_FAILED,
        "cannot resolve host",
        id="dns-failure",
    ),
]


@pytest.mark.parametrize(("uri", "overrides", "code", "fragment"), FETCH_ERRORS)
async def test_fetch_errors(
    env: Env, uri: str, overrides: dict[str, Any], code: int, fragment: str
) -> None:
    """Each refused or failed fetch raises its own code with a message that says why."""
    with pytest.raises(RpcError) as caught:
        await fetch_manifest(_fill(env, uri), _policy(env, overrides))
    assert caught.value.code == code
    assert fragment in caught.value.message


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads files regardless of permissions"
)
async def test_fetch_unreadable_file(env: Env) -> None:
    """A file the server may not read is a fetch failure naming the path."""
    with pytest.raises(FetchFailed, match="permission denied"):
        await fetch_manifest(f"file://{env.files}/unreadable.json", _policy(env, {}))


FETCH_OK: Final = [
    pytest.param("file://{files}/valid.json", {}, id="file"),
    pytest.param("file://localhost{files}/valid.json", {}, id="file-localhost"),
    pytest.param("{https}/manifest.json", {}, id="https"),
    pytest.param("{https}/redirect/3", {}, id="3-redirects"),
    pytest.param("{http}/manifest.json", {"allow_http": True}, id="http-allowed"),
    pytest.param(
        "ant://" + ANT_ADDRESS,
        {"ant_gateway": "{http}/ant/", "allow_http": True},
        id="ant-via-gateway",
    ),
]


@pytest.mark.parametrize(("uri", "overrides"), FETCH_OK)
async def test_fetch_and_parse_valid(
    env: Env, uri: str, overrides: dict[str, Any]
) -> None:
    """A valid manifest fetched over any allowed route parses to the same `Manifest`."""
    raw = await fetch_manifest(_fill(env, uri), _policy(env, overrides))
    assert raw == VALID_BYTES
    manifest = parse_manifest(raw)
    assert manifest == Manifest(
        id=VALID["id"],
        name="Notes",
        version="1.2.3",
        description="Take notes",
        icon_uri="https://example.com/icon.png",
        components=VALID["components"],
        raw=VALID,
    )


# --- parse_manifest ---------------------------------------------------------------------------


def _with(**changes: Any) -> bytes:
    """Return the valid manifest with top-level keys replaced (`None` removes a key)."""
    document = json.loads(VALID_BYTES)
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


def _component(**changes: Any) -> bytes:
    """Return the valid manifest with one component built from the frontend plus `changes`."""
    component = {**VALID["components"][0], **changes}
    component = {key: value for key, value in component.items() if value is not None}
    return _with(components=[component])


PARSE_ERRORS: Final = [
    # (raw, message fragment, first error path in data or None for JSON errors)
    pytest.param(
        b"not json {",
        "manifest is not valid JSON: Expecting value at line 1",
        None,
        id="not-json",
    ),
    pytest.param(b"", "manifest is not valid JSON", None, id="empty"),
    pytest.param(b"\xff\xfe{}", "not UTF-8", None, id="not-utf8"),
    pytest.param(b'{"a": NaN}', "NaN is not a JSON number", None, id="nan"),
    pytest.param(
        b"[" * 100_000, "manifest is not valid JSON", None, id="deeply-nested"
    ),
    pytest.param(b"[1, 2]", "$: must be of type object", "$", id="not-an-object"),
    pytest.param(
        _with(version="1.0"), "$.version: does not match", "$.version", id="version-1.0"
    ),
    pytest.param(
        _component(kind="middleware"),
        "$.components[0].kind: must be one of ['frontend', 'backend']",
        "$.components[0].kind",
        id="kind-middleware",
    ),
    pytest.param(
        _component(platform="Windows"),
        "$.components[0].platform: must be one of ['iOS', 'Android', 'desktop']",
        "$.components[0].platform",
        id="platform-windows",
    ),
    pytest.param(
        _with(components=[]),
        "$.components: must not be empty",
        "$.components",
        id="components-empty",
    ),
    pytest.param(
        _with(components=None),
        "$: 'components' is a required property",
        "$",
        id="components-missing",
    ),
    pytest.param(
        _component(target="x86_64-unknown-linux-gnu"),
        "$.components[0]: 'target' is not allowed on frontend components",
        "$.components[0]",
        id="frontend-with-target",
    ),
    pytest.param(
        _component(kind="backend", platform="iOS"),
        "$.components[0]: 'platform' is not allowed on backend components",
        "$.components[0]",
        id="backend-with-platform",
    ),
    pytest.param(
        _with(name=""), "$.name: must not be empty", "$.name", id="empty-name"
    ),
    pytest.param(
        _with(id=7), "$.id: must be of type string", "$.id", id="id-not-string"
    ),
]


@pytest.mark.parametrize(("raw", "fragment", "first_path"), PARSE_ERRORS)
def test_parse_errors(raw: bytes, fragment: str, first_path: str | None) -> None:
    """Each invalid manifest is -32004 with a message naming the path and the broken rule."""
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(raw)
    assert caught.value.code == MANIFEST_INVALID
    assert fragment in caught.value.message
    if first_path is None:
        assert caught.value.data is None
    else:
        assert caught.value.data["errors"][0]["path"] == first_path


def test_parse_reports_three_errors_sorted_by_path() -> None:
    """Many errors give the first three by path in the message and all of them in `data`."""
    raw = _with(
        version="1.0",
        name="",
        description=5,
        iconUri=None,
        components=[
            {"id": "c", "name": "c", "kind": "middleware", "version": "x"},
        ],
    )
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(raw)
    paths = [error["path"] for error in caught.value.data["errors"]]
    assert paths == sorted(paths, key=lambda path: (path != "$", path))
    assert paths[0] == "$"
    message = caught.value.message
    assert message.startswith("manifest invalid: $: 'iconUri' is a required property; ")
    assert message.count("; ") == 3 and message.endswith("more")
    assert len(paths) == 6


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            _with(components=[{**VALID["components"][0], "platform": "iOS"}]),
            id="frontend-with-platform",
        ),
        pytest.param(
            _with(components=[VALID["components"][1]]), id="backend-with-target"
        ),
        pytest.param(b"\xef\xbb\xbf" + VALID_BYTES, id="utf8-bom"),
        pytest.param(_with(metadata={"x": 1}, publisher="me"), id="optional-fields"),
    ],
)
def test_parse_valid(raw: bytes) -> None:
    """Manifests the schema allows parse, keeping the whole document in `raw`."""
    manifest = parse_manifest(raw)
    assert manifest.id == VALID["id"]
    assert manifest.raw == json.loads(raw.decode("utf-8-sig"))


# --- secrets never leak -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(f"root:{SECRET}:19000:0:99999:7:::\n".encode(), id="shadow-like"),
        pytest.param(json.dumps(SECRET).encode(), id="json-string"),
        pytest.param(
            json.dumps(
                {
                    "id": SECRET,
                    "version": SECRET,
                    "name": "",
                    "components": [
                        {"kind": SECRET, "platform": SECRET, "target": SECRET}
                    ],
                }
            ).encode(),
            id="json-values",
        ),
        pytest.param(b'{"a": 1, ' + SECRET.encode() + b"}", id="broken-json"),
        pytest.param(b"\xff" + SECRET.encode(), id="binary"),
        pytest.param(SECRET.encode() * 100_000, id="oversized"),
    ],
)
async def test_file_error_never_contains_its_content(env: Env, content: bytes) -> None:
    """Whatever a file holds, neither the fetch nor the parse error repeats it."""
    path = env.files / "secret.json"
    path.write_bytes(content)
    with pytest.raises(RpcError) as caught:
        parse_manifest(await fetch_manifest(f"file://{path}", _policy(env, {})))
    assert caught.value.code in (MANIFEST_INVALID, FETCH_FAILED)
    assert SECRET not in json.dumps(caught.value.to_dict())
    assert "C0FFEE" not in json.dumps(caught.value.to_dict())


@pytest.mark.parametrize("path", ["/missing", "/secret"])
async def test_response_body_never_in_error(env: Env, path: str) -> None:
    """Neither an error status nor a non-JSON body puts the response body in the error."""
    with pytest.raises(RpcError) as caught:
        parse_manifest(await fetch_manifest(env.https + path, _policy(env, {})))
    assert SECRET not in json.dumps(caught.value.to_dict())


async def test_credentials_in_uri_not_echoed(env: Env) -> None:
    """User info and query strings of a URI stay out of messages; they often carry secrets."""
    uri = f"https://user:{SECRET}@127.0.0.1:{env.https.rsplit(':', 1)[1]}/missing?sig={SECRET}"
    with pytest.raises(FetchFailed) as caught:
        await fetch_manifest(uri, _policy(env, {}))
    assert "HTTP 404" in caught.value.message
    assert SECRET not in caught.value.message
