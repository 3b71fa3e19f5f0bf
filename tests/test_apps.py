"""apps.install, apps.list, apps.uninstall through a real server, from real files and a real HTTPS host."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import web

from osnova_server.client import OsnovaClient, RpcCallError
from osnova_server.errors import (
    FETCH_FAILED,
    FORBIDDEN,
    INVALID_PARAMS,
    MANIFEST_INVALID,
    UNSUPPORTED_SCHEME,
)
from osnova_server.events import APPS_INSTALLED, APPS_UNINSTALLED, Event
from osnova_server.security.tls import generate_self_signed
from tests.conftest import RunningServer, make_config, running_server
from tests.servers import bound_loopback_socket, stream_forever
from tests.test_pairing import pair_device

# Run on SQLite and on PostgreSQL (tests/conftest.py).
BOTH_ENGINES = True

FETCH_TIMEOUT: Final = 1.0
TWO_MIB: Final = 2 * 1_048_576
LIST_FIELDS: Final = {
    "id", "name", "version", "description", "icon_uri", "manifest_uri", "installed_at", "components",
}


def manifest(**changes: Any) -> dict[str, Any]:
    """A valid manifest, with top-level fields changed."""
    document: dict[str, Any] = {
        "id": "ant://notes",
        "name": "Notes",
        "version": "1.2.3",
        "iconUri": "https://example.com/notes.png",
        "description": "Take notes",
        "components": [
            {"id": "ant://notes-ui", "name": "UI", "kind": "frontend", "version": "1.0.0", "platform": "desktop"},
            {"id": "ant://notes-api", "name": "API", "kind": "backend", "version": "0.1.0"},
        ],
    }
    document.update(changes)
    return document


def with_component(**changes: Any) -> dict[str, Any]:
    """A valid manifest whose first component has fields changed."""
    document = manifest()
    document["components"][0].update(changes)
    return document


# -- the HTTPS manifest host the tests start -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestHost:
    """Base URLs of the test's manifest servers, and a context that trusts their certificate."""

    https: str
    http: str
    silent: str
    trust: ssl.SSLContext


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by the test."""
    directory = tmp_path_factory.mktemp("host-tls")
    cert, key = directory / "host.crt", directory / "host.key"
    generate_self_signed(cert, key, days=2)
    return cert, key


async def _notes(request: web.Request) -> web.Response:
    """The valid manifest."""
    return web.json_response(manifest(name="Notes over HTTPS"))


async def _big(request: web.Request) -> web.Response:
    """A 2 MiB JSON document."""
    return web.json_response(manifest(description="x" * TWO_MIB))


@pytest.fixture
async def host(tls_files: tuple[Path, Path]) -> AsyncIterator[ManifestHost]:
    """An HTTPS and a plain HTTP manifest server, and a TCP server that never says a word."""
    cert, key = tls_files
    plain_sock, tls_sock = bound_loopback_socket(), bound_loopback_socket()
    http_base = f"http://127.0.0.1:{plain_sock.getsockname()[1]}"

    async def to_http(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{http_base}/notes.json")

    app = web.Application()
    app.router.add_get("/notes.json", _notes)
    app.router.add_get("/big.json", _big)
    app.router.add_get("/forever.json", stream_forever)
    app.router.add_get("/to-http.json", to_http)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert, key)
    await web.SockSite(runner, tls_sock, ssl_context=server_ssl).start()
    await web.SockSite(runner, plain_sock).start()

    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    silent = await asyncio.start_server(say_nothing, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    try:
        yield ManifestHost(
            https=f"https://127.0.0.1:{tls_sock.getsockname()[1]}",
            http=http_base,
            silent=f"https://127.0.0.1:{silent_port}",
            trust=ssl.create_default_context(cafile=str(cert)),
        )
    finally:
        silent.close()
        await runner.cleanup()


@pytest.fixture
async def osnova(state_dir: Path, host: ManifestHost) -> AsyncIterator[RunningServer]:
    """A server with a short fetch timeout that trusts the manifest host's certificate."""
    async with running_server(make_config(state_dir, apps={"fetch_timeout": FETCH_TIMEOUT})) as running:
        running.runtime.apps.fetch_ssl_context = host.trust
        yield running


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory of manifest files."""
    path = tmp_path / "manifests"
    path.mkdir()
    return path


def write_manifest(directory: Path, name: str, document: Any) -> str:
    """Write `document` (JSON unless bytes) to a file and return its file:// URI."""
    path = directory / name
    path.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    return path.as_uri()


async def install(server: RunningServer, uri: str, token: str | None = None) -> Any:
    """Call apps.install as admin (or with `token`)."""
    async with OsnovaClient(server.url, token or server.admin_token()) as client:
        return await client.call("apps.install", {"manifest_uri": uri})


async def call(server: RunningServer, method: str, params: Any = None) -> Any:
    """Call a method as admin."""
    async with server.client(admin=True) as client:
        return await client.call(method, params)


# -- installing ----------------------------------------------------------------------------------


async def test_install_from_a_file_lists_the_app_with_the_contract_fields(
    osnova: RunningServer, files: Path, events: list[Event]
) -> None:
    uri = write_manifest(files, "notes.json", manifest())
    assert await install(osnova, uri) == "ant://notes"
    [app] = await call(osnova, "apps.list")
    assert set(app) == LIST_FIELDS
    assert app["id"] == "ant://notes"
    assert app["name"] == "Notes"
    assert app["version"] == "1.2.3"
    assert app["description"] == "Take notes"
    assert app["icon_uri"] == "https://example.com/notes.png"
    assert app["manifest_uri"] == uri
    assert app["components"] == manifest()["components"]
    assert app["installed_at"].endswith("Z")
    assert [(e.topic, e.data) for e in events] == [
        (APPS_INSTALLED, {"id": "ant://notes", "name": "Notes", "version": "1.2.3"}),
    ]


async def test_install_from_the_https_host(osnova: RunningServer, host: ManifestHost) -> None:
    assert await install(osnova, f"{host.https}/notes.json") == "ant://notes"
    [app] = await call(osnova, "apps.list")
    assert app["name"] == "Notes over HTTPS"
    assert app["manifest_uri"] == f"{host.https}/notes.json"


async def test_an_owner_device_may_install_over_https(osnova: RunningServer, host: ManifestHost) -> None:
    device_token = (await pair_device(osnova, role="owner"))["access_token"]
    assert await install(osnova, f"{host.https}/notes.json", device_token) == "ant://notes"
    assert [app["id"] for app in await call(osnova, "apps.list")] == ["ant://notes"]


async def test_user_info_in_the_uri_is_not_kept(osnova: RunningServer, host: ManifestHost) -> None:
    uri = host.https.replace("https://", "https://reader:s3cret@") + "/notes.json"
    await install(osnova, uri)
    [app] = await call(osnova, "apps.list")
    assert app["manifest_uri"] == f"{host.https}/notes.json"
    assert "s3cret" not in json.dumps(app)


async def test_production_verification_refuses_the_test_certificate(
    osnova: RunningServer, host: ManifestHost
) -> None:
    osnova.runtime.apps.fetch_ssl_context = None  # the default: the system's trusted CAs only
    with pytest.raises(RpcCallError) as refused:
        await install(osnova, f"{host.https}/notes.json")
    assert refused.value.code == FETCH_FAILED
    assert "not trusted" in refused.value.message
    assert await call(osnova, "apps.list") == []


async def test_installing_the_same_id_again_upgrades(
    osnova: RunningServer, files: Path, events: list[Event]
) -> None:
    uri = write_manifest(files, "notes.json", manifest())
    await install(osnova, uri)
    [before] = await call(osnova, "apps.list")
    upgraded_uri = write_manifest(files, "notes-1.3.json", manifest(version="1.3.0", name="Notes 2"))
    assert await install(osnova, upgraded_uri) == "ant://notes"
    [after] = await call(osnova, "apps.list")
    assert (after["version"], after["name"], after["manifest_uri"]) == ("1.3.0", "Notes 2", upgraded_uri)
    assert after["installed_at"] >= before["installed_at"]
    assert [e.data["version"] for e in events if e.topic == APPS_INSTALLED] == ["1.2.3", "1.3.0"]


async def test_uninstall_answers_true_then_false(
    osnova: RunningServer, files: Path, events: list[Event]
) -> None:
    await install(osnova, write_manifest(files, "notes.json", manifest()))
    await install(osnova, write_manifest(files, "chat.json", manifest(id="ant://chat", name="Chat")))
    assert await call(osnova, "apps.uninstall", {"app_id": "ant://notes"}) is True
    assert [app["id"] for app in await call(osnova, "apps.list")] == ["ant://chat"]
    assert await call(osnova, "apps.uninstall", ["ant://notes"]) is False
    assert [app["id"] for app in await call(osnova, "apps.list")] == ["ant://chat"]
    assert [(e.topic, e.data) for e in events if e.topic == APPS_UNINSTALLED] == [
        (APPS_UNINSTALLED, {"id": "ant://notes"}),
    ]


async def test_installed_apps_survive_a_restart(state_dir: Path, files: Path) -> None:
    config = make_config(state_dir)
    uri = write_manifest(files, "notes.json", manifest())
    async with running_server(config) as first:
        await install(first, uri)
        listed = await call(first, "apps.list")
    async with running_server(config) as second:
        assert await call(second, "apps.list") == listed


# -- refusals: each with its code, and apps.list unchanged ---------------------------------------


def _symlink_loop(files: Path) -> str:
    """Two symbolic links pointing at each other."""
    (files / "loop-a.json").symlink_to(files / "loop-b.json")
    (files / "loop-b.json").symlink_to(files / "loop-a.json")
    return (files / "loop-a.json").as_uri()


def _directory(files: Path) -> str:
    """A directory named like a manifest."""
    (files / "dir.json").mkdir()
    return (files / "dir.json").as_uri()


BAD_FILES: Final = [
    pytest.param(b'{"id": "ant://x", "name": ', MANIFEST_INVALID, "not valid JSON", id="not-json"),
    pytest.param(manifest(version="1.0"), MANIFEST_INVALID, "$.version", id="version-1.0"),
    pytest.param(with_component(kind="middleware"), MANIFEST_INVALID, "$.components[0].kind", id="kind-middleware"),
    pytest.param(with_component(platform="Windows"), MANIFEST_INVALID, "$.components[0].platform", id="platform-windows"),
    pytest.param(manifest(components=[]), MANIFEST_INVALID, "$.components", id="empty-components"),
    pytest.param(
        {k: v for k, v in manifest().items() if k != "components"}, MANIFEST_INVALID, "components",
        id="no-components",
    ),
    pytest.param(b"{" + b" " * TWO_MIB + b"}", FETCH_FAILED, "larger than 1 MiB", id="2-mib-file"),
]


@pytest.mark.parametrize(("document", "code", "fragment"), BAD_FILES)
async def test_bad_manifest_files_are_refused(
    osnova: RunningServer, files: Path, events: list[Event], document: Any, code: int, fragment: str
) -> None:
    await install(osnova, write_manifest(files, "good.json", manifest(id="ant://good")))
    before = await call(osnova, "apps.list")
    with pytest.raises(RpcCallError) as refused:
        await install(osnova, write_manifest(files, "bad.json", document))
    assert refused.value.code == code
    assert fragment in refused.value.message
    assert await call(osnova, "apps.list") == before
    assert len(events) == 1  # the good install only


BAD_URIS: Final = [
    pytest.param("{https}/big.json", FETCH_FAILED, "larger than 1 MiB", id="2-mib-https"),
    pytest.param("{https}/to-http.json", FETCH_FAILED, "https to http", id="redirect-to-http"),
    pytest.param("{https}/forever.json", FETCH_FAILED, "larger than 1 MiB", id="sends-forever"),
    pytest.param("{silent}/notes.json", FETCH_FAILED, "timed out after 1 s", id="never-answers"),
    pytest.param("{https}/missing.json", FETCH_FAILED, "HTTP 404", id="http-404"),
    pytest.param("{http}/notes.json", UNSUPPORTED_SCHEME, "allow_http", id="http-not-allowed"),
    pytest.param("ftp://127.0.0.1/notes.json", UNSUPPORTED_SCHEME, "'ftp'", id="ftp"),
    pytest.param("ant://abcdef", UNSUPPORTED_SCHEME, "ant_gateway", id="ant-without-gateway"),
    pytest.param("notes.json", UNSUPPORTED_SCHEME, "no scheme", id="no-scheme"),
    pytest.param("{files}/missing.json", FETCH_FAILED, "not found", id="missing-file"),
    pytest.param("directory", FETCH_FAILED, "is a directory", id="directory"),
    pytest.param("symlink-loop", FETCH_FAILED, "symbolic link loop", id="symlink-loop"),
]


@pytest.mark.parametrize(("template", "code", "fragment"), BAD_URIS)
async def test_bad_manifest_uris_are_refused(
    osnova: RunningServer,
    host: ManifestHost,
    files: Path,
    events: list[Event],
    template: str,
    code: int,
    fragment: str,
) -> None:
    await install(osnova, write_manifest(files, "good.json", manifest(id="ant://good")))
    before = await call(osnova, "apps.list")
    if template == "directory":
        uri = _directory(files)
    elif template == "symlink-loop":
        uri = _symlink_loop(files)
    else:
        uri = template.format(https=host.https, http=host.http, silent=host.silent, files=files.as_uri())
    with pytest.raises(RpcCallError) as refused:
        await install(osnova, uri)
    assert refused.value.code == code
    assert fragment in refused.value.message
    assert await call(osnova, "apps.list") == before
    assert len(events) == 1  # the good install only


async def test_an_owner_device_may_not_read_server_files(
    osnova: RunningServer, files: Path, events: list[Event]
) -> None:
    secret_file = files / "secret.json"
    secret_file.write_text(json.dumps(manifest(description="TOP-SECRET")))
    os.chmod(secret_file, 0o600)
    device_token = (await pair_device(osnova, role="owner"))["access_token"]
    events.clear()  # the pairing's own event
    for uri in (secret_file.as_uri(), (files / "missing.json").as_uri()):
        with pytest.raises(RpcCallError) as refused:
            await install(osnova, uri, device_token)
        assert refused.value.code == FORBIDDEN
        # The same answer whether or not the file exists: a phone learns nothing about the disk.
        assert refused.value.message.startswith("file:// manifest URIs are only allowed for admin tokens")
        assert "TOP-SECRET" not in refused.value.message
    assert await call(osnova, "apps.list") == []
    assert events == []


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        pytest.param({}, "missing required param 'manifest_uri'", id="missing"),
        pytest.param({"manifest_uri": 5}, "'manifest_uri' must be a string", id="not-a-string"),
        pytest.param({"manifest_uri": "x", "force": True}, "unexpected param 'force'", id="unexpected"),
    ],
)
async def test_install_params_are_checked(osnova: RunningServer, params: Any, fragment: str) -> None:
    with pytest.raises(RpcCallError) as refused:
        await call(osnova, "apps.install", params)
    assert refused.value.code == INVALID_PARAMS
    assert fragment in refused.value.message
    assert await call(osnova, "apps.list") == []
