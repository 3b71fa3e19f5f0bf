"""Traces end to end: a real server exporting over OTLP/HTTP to a real receiver on loopback.

The receiver decodes the protobuf bodies with opentelemetry-proto. Without the `tracing` extra
these tests skip, except the ones that run the server without it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web

from osnova_server import config as config_module
from osnova_server import logs
from osnova_server.config import Config
from osnova_server.tracing import EXTRA_MISSING, extra_installed, statement_name
from osnova_server.web.tracing import TRACERESPONSE
from tests.conftest import RunningServer, ServerProcess, free_port, make_config, running_server, write_config
from tests.servers import loopback_app
from tests.test_manifest import VALID

needs_extra = pytest.mark.skipif(
    not extra_installed(), reason="the tracing extra is not installed: pip install -e '.[tracing]'"
)

QUERY_SECRET: Final = "sig-QUERYSECRET-7f3a"


# -- the OTLP/HTTP receiver ----------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP traces receiver: keeps every span it is sent, or answers 503 when told to."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []

    async def receive(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.requests += 1
        if self.mode == "503":
            return web.Response(status=503, text="collector overloaded")
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            self.resources.append(attributes_of(resource_spans.resource))
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf",
        )

    def trace(self, trace_id: str) -> list[Any]:
        """The spans received for one trace id (hex)."""
        return [span for span in self.spans if span.trace_id.hex() == trace_id]

    async def wait_for(self, trace_id: str, names: set[str], timeout: float = 20.0) -> dict[str, Any]:
        """Poll until spans with all these names arrived for the trace; name -> span."""
        deadline = time.monotonic() + timeout
        while True:
            found = {span.name: span for span in self.trace(trace_id)}
            if names <= set(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"spans {sorted(names - set(found))} never arrived; got {sorted(found)}")
            await asyncio.sleep(0.05)


def attributes_of(item: Any) -> dict[str, Any]:
    """A span's (or resource's) attributes as a plain dict."""
    values: dict[str, Any] = {}
    for pair in item.attributes:
        value = pair.value
        values[pair.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return values


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    """A Collector on an ephemeral loopback port, and its base URL."""
    receiver = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.receive)
    async with loopback_app(app) as base:
        yield receiver, base


@pytest.fixture
async def manifest_url() -> AsyncIterator[str]:
    """A loopback manifest host; the URL carries a query string standing in for a signature."""
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        return web.json_response(VALID)

    app.router.add_get("/app.json", serve)
    async with loopback_app(app) as base:
        yield f"{base}/app.json?sig={QUERY_SECRET}"


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """The server's log, as JSON lines at debug level, through the real logging pipeline."""
    path = tmp_path / "server.log"
    root = logging_root_state()
    handle = logs.setup_logging("debug", "json", str(path))
    yield path
    handle.stop()
    root()


def logging_root_state() -> Callable[[], None]:
    """Remember the root logger's level and handlers; the returned function puts them back."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    def restore() -> None:
        root.setLevel(level)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)

    return restore


def traced_config(state_dir: Path, endpoint: str, ratio: float = 1.0) -> Config:
    """A test config with tracing on, exporting to `endpoint`, http:// manifests allowed."""
    return make_config(
        state_dir,
        tracing={"enabled": True, "otlp_endpoint": endpoint, "sample_ratio": ratio},
        apps={"allow_http": True},
    )


def new_ids() -> tuple[str, str]:
    """A fresh trace id and parent span id, as a client would make them."""
    return secrets.token_hex(16), secrets.token_hex(8)


async def rpc(
    http: aiohttp.ClientSession, server: RunningServer, method: str, params: Any = None, *,
    token: str | None = None, traceparent: str | None = None,
) -> tuple[dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    """POST one call; return the answer and the response headers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if traceparent:
        headers["traceparent"] = traceparent
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    async with http.post(f"{server.url}/rpc", json=request, headers=headers) as response:
        return await response.json(), response.headers


def every_string(spans: list[Any], resources: list[dict[str, Any]]) -> str:
    """Everything exported, as one text to search: names, attribute keys and values."""
    parts = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{key}={value}" for key, value in attributes_of(span).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{key}={value}" for key, value in attributes_of(event).items())
    for resource in resources:
        parts.extend(f"{key}={value}" for key, value in resource.items())
    return "\n".join(parts)


# -- one trace per call ----------------------------------------------------------------------------


@needs_extra
async def test_a_call_with_traceparent_gives_its_rpc_sql_and_fetch_spans_under_that_trace(
    state_dir: Path, collector: tuple[Collector, str], manifest_url: str, log_file: Path,
    http: aiohttp.ClientSession,
) -> None:
    receiver, endpoint = collector
    async with running_server(traced_config(state_dir, endpoint)) as server:
        token = server.admin_token()
        trace_id, parent_id = new_ids()
        answer, headers = await rpc(
            http, server, "apps.install", {"manifest_uri": manifest_url}, token=token,
            traceparent=f"00-{trace_id}-{parent_id}-01",
        )
        assert answer["result"] == VALID["id"]
        echoed = headers[TRACERESPONSE]
        assert echoed.startswith(f"00-{trace_id}-") and int(echoed[-2:], 16) & 1 == 1
        found = await receiver.wait_for(
            trace_id, {"POST /rpc", "apps.install", "manifest.fetch", "transaction", "INSERT apps"},
        )
        http_span, call, fetch, transaction, insert = (
            found["POST /rpc"], found["apps.install"], found["manifest.fetch"], found["transaction"],
            found["INSERT apps"],
        )
        assert http_span.parent_span_id.hex() == parent_id
        assert echoed[:-3] == f"00-{trace_id}-{http_span.span_id.hex()}"
        assert call.parent_span_id == http_span.span_id
        assert fetch.parent_span_id == call.span_id
        assert transaction.parent_span_id == call.span_id
        assert insert.parent_span_id == transaction.span_id
        assert attributes_of(http_span) | {"client.address": "127.0.0.1"} == {
            "http.request.method": "POST", "http.route": "/rpc", "url.scheme": "http",
            "http.response.status_code": 200, "client.address": "127.0.0.1",
        }
        assert attributes_of(call) == {
            "rpc.system": "jsonrpc", "rpc.method": "apps.install", "osnova.rpc.outcome": "ok",
            "osnova.principal.kind": "admin", "osnova.transport": "http",
        }
        fetch_attributes = attributes_of(fetch)
        assert fetch_attributes["server.address"] == "127.0.0.1"
        assert fetch_attributes["http.response.status_code"] == 200
        assert fetch_attributes["osnova.manifest.bytes"] == len(json.dumps(VALID))
        assert attributes_of(insert) == {"db.system.name": "sqlite", "db.query.summary": "INSERT apps"}
        assert {"service.name": "osnova-server"}.items() <= receiver.resources[0].items()

        # A pairing code and the device tokens it buys, in another traced call.
        payload, _ = await rpc(http, server, "pairing.start", token=token)
        code = payload["result"]["pairing"]["code"]
        grant, _ = await rpc(http, server, "pairing.complete", {"token": code})
        device_token = grant["result"]["access_token"]
        refresh_token = grant["result"]["refresh_token"]
        failed, _ = await rpc(http, server, "apps.install", {"manifest_uri": "gopher://x/?k=" + QUERY_SECRET},
                              token=token)
        assert failed["error"]["code"] == -32005
    logged = log_file.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in logged.splitlines()]
    installed = [line for line in lines if line["msg"].startswith("installed app ant://0123abcd")]
    assert installed and installed[0]["trace_id"] == trace_id
    assert installed[0]["span_id"] == call.span_id.hex()
    audit_lines = [line for line in lines if line.get("event") == "rpc" and line.get("method") == "apps.install"]
    assert audit_lines[0]["trace_id"] == trace_id
    # Nothing exported or logged holds a token, a pairing code or a manifest's query string.
    exported = every_string(receiver.spans, receiver.resources)
    for secret in (token, device_token, refresh_token, code, code.replace("-", ""), QUERY_SECRET):
        assert secret not in exported
        assert secret not in logged


@needs_extra
async def test_the_websocket_upgrade_continues_the_trace_and_each_message_is_a_span(
    state_dir: Path, collector: tuple[Collector, str], http: aiohttp.ClientSession,
) -> None:
    receiver, endpoint = collector
    async with running_server(traced_config(state_dir, endpoint)) as server:
        trace_id, parent_id = new_ids()
        headers = {"Authorization": f"Bearer {server.admin_token()}", "traceparent": f"00-{trace_id}-{parent_id}-01"}
        async with http.ws_connect(server.url.replace("http", "ws", 1) + "/ws", headers=headers) as socket:
            await socket.send_json({"jsonrpc": "2.0", "method": "apps.list", "id": 7})
            while (answer := await socket.receive_json()).get("id") != 7:
                pass  # the `connected` notification comes first
            assert answer["result"] == []
        found = await receiver.wait_for(trace_id, {"GET /ws", "ws.message", "apps.list"})
    upgrade, message, call = found["GET /ws"], found["ws.message"], found["apps.list"]
    assert upgrade.parent_span_id.hex() == parent_id
    assert attributes_of(upgrade)["http.response.status_code"] == 101
    assert message.parent_span_id == upgrade.span_id
    assert call.parent_span_id == message.span_id
    assert attributes_of(call)["osnova.transport"] == "ws"


@needs_extra
async def test_sample_ratio_zero_samples_only_traces_the_caller_sampled(
    state_dir: Path, collector: tuple[Collector, str], http: aiohttp.ClientSession,
) -> None:
    receiver, endpoint = collector
    async with running_server(traced_config(state_dir, endpoint, ratio=0.0)) as server:
        token = server.admin_token()
        _, unsampled_headers = await rpc(http, server, "apps.list", token=token)
        _, unsampled, _, flags = unsampled_headers[TRACERESPONSE].split("-")
        assert int(flags, 16) & 1 == 0  # not sampled
        trace_id, parent_id = new_ids()
        await rpc(http, server, "apps.list", token=token, traceparent=f"00-{trace_id}-{parent_id}-01")
        await receiver.wait_for(trace_id, {"POST /rpc", "apps.list"})
    assert receiver.trace(unsampled) == []


@pytest.mark.parametrize("failure", ["503", "down"])
@needs_extra
async def test_a_collector_that_is_down_or_refuses_costs_calls_nothing_and_drops_are_counted(
    state_dir: Path, collector: tuple[Collector, str], http: aiohttp.ClientSession, failure: str,
) -> None:
    receiver, endpoint = collector
    if failure == "503":
        receiver.mode = "503"
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_server(traced_config(state_dir, endpoint)) as server:
        token = server.admin_token()
        slowest = 0.0
        for _ in range(30):
            started = time.perf_counter()
            answer, _ = await rpc(http, server, "apps.list", token=token)
            slowest = max(slowest, time.perf_counter() - started)
            assert answer["result"] == []
        # Loose: an export attempt takes up to 5 s of retries, and no call may wait for one.
        assert slowest < 2.5, slowest
        deadline = time.monotonic() + 30
        while True:
            async with http.get(f"{server.url}/metrics") as response:
                text = await response.text()
            dropped = [
                line for line in text.splitlines()
                if line.startswith('tracing_spans_dropped_total{reason="export_failed"}')
            ]
            if dropped and float(dropped[0].split()[-1]) > 0:
                break
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.2)
        # Still answering promptly while the exporter keeps failing.
        started = time.perf_counter()
        assert (await rpc(http, server, "apps.list", token=token))[0]["result"] == []
        assert time.perf_counter() - started < 2.5
    if failure == "503":
        assert receiver.requests > 0 and receiver.spans == []


@needs_extra
async def test_without_an_endpoint_spans_are_written_to_the_log(
    state_dir: Path, log_file: Path, http: aiohttp.ClientSession,
) -> None:
    async with running_server(traced_config(state_dir, "")) as server:
        trace_id, parent_id = new_ids()
        await rpc(http, server, "apps.list", token=server.admin_token(), traceparent=f"00-{trace_id}-{parent_id}-01")
        deadline = time.monotonic() + 20
        while True:
            lines = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
            spans = [line for line in lines if line["logger"] == "osnova.trace" and line["trace_id"] == trace_id]
            if {"span POST /rpc", "span apps.list"} <= {line["msg"] for line in spans}:
                break
            assert time.monotonic() < deadline, spans
            await asyncio.sleep(0.05)
    by_name = {line["msg"]: line for line in spans}
    assert by_name["span POST /rpc"]["parent_span_id"] == parent_id
    assert by_name["span apps.list"]["parent_span_id"] == by_name["span POST /rpc"]["span_id"]
    assert by_name["span apps.list"]["rpc.method"] == "apps.list"
    assert by_name["span POST /rpc"]["kind"] == "server"


def test_statement_names_say_verb_and_table_and_never_a_value() -> None:
    assert statement_name("SELECT value FROM settings WHERE key = ?") == "SELECT settings"
    assert statement_name("INSERT INTO apps (id) VALUES (?) ON CONFLICT(id) DO UPDATE SET id = 1") == "INSERT apps"
    assert statement_name("UPDATE devices SET last_seen = ? WHERE device_id = ?") == "UPDATE devices"
    assert statement_name("DELETE FROM bans WHERE banned_until <= ?") == "DELETE bans"
    assert statement_name("PRAGMA user_version = 3") == "PRAGMA user_version"
    assert statement_name("BEGIN IMMEDIATE") == "BEGIN"
    assert statement_name("SELECT 1") == "SELECT"


# -- without the extra, or with tracing off -----------------------------------------------------

_TRACING_OFF_PROBE: Final = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from osnova_server import config as config_module
    from osnova_server.client import OsnovaClient
    from osnova_server.security.tokens import Scope
    from osnova_server.server import Server
    from osnova_server.web.keys import STATE_KEY

    async def main():
        config = config_module.load(Path(sys.argv[1]))
        server = Server(config)
        await server.start()
        try:
            token = server.app[STATE_KEY].runtime.tokens.issue(Scope.ADMIN, None, 60)[0]
            async with OsnovaClient(f"http://127.0.0.1:{server.port}", token) as client:
                await client.call("apps.list")
                await client.call("status.get")
        finally:
            await server.stop()
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))

    asyncio.run(main())
""")


def test_a_server_with_tracing_off_never_imports_opentelemetry(state_dir: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "server.toml", make_config(state_dir))
    probe = subprocess.run(
        [sys.executable, "-c", _TRACING_OFF_PROBE, str(config_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == []


@pytest.fixture
def without_extra(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import opentelemetry` fails, as on a server without the extra."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("the tracing extra is not installed")\n')
    import os

    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))}


def _cli(config_path: Path, command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "osnova_server", "--config", str(config_path), command],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_tracing_enabled_without_the_extra_is_one_config_error(
    state_dir: Path, tmp_path: Path, without_extra: dict[str, str], command: str,
) -> None:
    config = config_module.replace(make_config(state_dir), "tracing", enabled=True)
    config_path = write_config(tmp_path / "server.toml", config)
    result = _cli(config_path, command, without_extra)
    assert result.returncode == 2, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(problems) == 1, result.stderr
    assert EXTRA_MISSING in problems[0]
    assert "Traceback" not in result.stderr


async def test_the_server_runs_without_the_extra(
    state_dir: Path, tmp_path: Path, without_extra: dict[str, str],
    server_process: Callable[..., ServerProcess], http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    config = config_module.replace(make_config(state_dir), "server", bind_address=f"127.0.0.1:{port}")
    process = server_process(write_config(tmp_path / "server.toml", config), without_extra)
    url = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(process.wait_ready, url)
    async with http.get(f"{url}/health") as response:
        assert response.status == 200
        assert TRACERESPONSE not in response.headers
    code, err = await asyncio.to_thread(process.stop)
    assert code == 0, err


def test_the_endpoint_must_be_an_http_url(state_dir: Path) -> None:
    for endpoint in ("collector:4318", "ftp://collector/", "http:///v1/traces", "http://c:4318/?token=x"):
        config = config_module.replace(make_config(state_dir), "tracing", otlp_endpoint=endpoint)
        problems = config_module.validate(config)
        assert any(p.startswith("[tracing] otlp_endpoint must be an http:// or https:// URL") for p in problems), endpoint
