"""GET /metrics: the series the contract names, bounded label sets, allow_from, and promtool."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final

import aiohttp
import pytest
from aioprometheus.renderer import render

from osnova_server import __version__
from osnova_server.metrics import DURATION_BUCKETS, Metrics
from osnova_server.rpc.protocol import UNKNOWN_METHOD
from tests.conftest import RunningServer, make_config, running_server
from tests.test_apps import manifest

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

_IMPORTED_AT: Final = time.time()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Prometheus text format into {(name, labels): value}."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 if the series does not exist."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[frozenset[tuple[str, str]]]:
    """The label sets of every series of a metric."""
    return [labels for (sample, labels) in samples if sample == name]


async def scrape(server: RunningServer, local_addr: str | None = None) -> tuple[int, str]:
    """GET /metrics, optionally from a chosen loopback source address."""
    connector = aiohttp.TCPConnector(local_addr=(local_addr, 0) if local_addr else None)
    async with aiohttp.ClientSession(connector=connector) as session, session.get(f"{server.url}/metrics") as response:
        return response.status, await response.text()


async def post_rpc(server: RunningServer, body: str, token: str | None) -> int:
    """POST a raw body to /rpc; the HTTP status."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.post(f"{server.url}/rpc", data=body, headers=headers) as answer:
        await answer.read()
        return answer.status


async def test_rpc_calls_are_counted_by_method_and_outcome(osnova: RunningServer) -> None:
    async with osnova.client(admin=True) as client:
        for _ in range(3):
            await client.call("status.get")
        await client.post({"jsonrpc": "2.0", "method": "apps.uninstall", "params": [1], "id": 1})
        await client.post({"jsonrpc": "2.0", "method": "no.such", "id": 2})
        await client.post([{"jsonrpc": "2.0", "method": "config.getServer", "id": n} for n in range(4)])
    status, text = await scrape(osnova)
    assert status == 200
    samples = parse(text)
    assert value(samples, "rpc_requests_total", method="status.get", outcome="ok") == 3
    assert value(samples, "rpc_requests_total", method="apps.uninstall", outcome="invalid_params") == 1
    assert value(samples, "rpc_requests_total", method=UNKNOWN_METHOD, outcome="method_not_found") == 1
    assert value(samples, "rpc_requests_total", method="config.getServer", outcome="ok") == 4
    assert value(samples, "rpc_request_duration_seconds_count", method="status.get") == 3
    assert value(samples, "rpc_request_duration_seconds_bucket", method="status.get", le="+Inf") == 3
    assert 0 < value(samples, "rpc_request_duration_seconds_sum", method="status.get") < 3
    buckets = [labels for labels in series(samples, "rpc_request_duration_seconds_bucket")
               if ("method", "status.get") in labels]
    assert len(buckets) >= 10  # a real histogram, not a summary
    assert value(samples, "active_connections") == 0


async def test_http_answers_are_counted_by_route_template_and_status(osnova: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/health", "/health", "/status", "/no-such-page", f"/x/{secrets.token_hex(4)}"):
            async with session.get(f"{osnova.url}{path}") as response:
                await response.read()
    assert await post_rpc(osnova, '{"jsonrpc":"2.0","method":"status.get","id":1}', None) == 401
    assert await post_rpc(osnova, "x" * (2 * 1024 * 1024), osnova.admin_token()) == 413
    samples = parse((await scrape(osnova))[1])
    assert value(samples, "http_requests_total", route="/health", status="200") == 2
    assert value(samples, "http_requests_total", route="/status", status="200") == 1
    assert value(samples, "http_requests_total", route="(unmatched)", status="404") == 2
    assert value(samples, "http_requests_total", route="/rpc", status="401") == 1
    assert value(samples, "http_requests_total", route="/rpc", status="413") == 1


async def test_random_method_names_and_paths_add_no_series(osnova: RunningServer) -> None:
    async with osnova.client(admin=True) as client:
        await client.post({"jsonrpc": "2.0", "method": "warm.up", "id": 0})
        before = parse((await scrape(osnova))[1])
        batch = [{"jsonrpc": "2.0", "method": f"m.{secrets.token_hex(8)}", "id": n} for n in range(100)]
        for _ in range(5):
            await client.post(batch)  # 500 distinct unknown names in all
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(f"{osnova.url}/{secrets.token_hex(8)}") as response:
                await response.read()
    after = parse((await scrape(osnova))[1])
    assert value(after, "rpc_requests_total", method=UNKNOWN_METHOD, outcome="method_not_found") == 501
    for name in ("rpc_requests_total", "rpc_request_duration_seconds_bucket"):
        assert len(series(after, name)) == len(series(before, name))
    routes = {dict(labels)["route"] for labels in series(after, "http_requests_total")}
    assert routes <= {"/rpc", "/metrics", "(unmatched)"}


@pytest.mark.parametrize(("allow_from", "source", "expected"), [
    (["127.0.0.1/32"], "127.0.0.2", 403),
    (["127.0.0.1/32"], "127.0.0.1", 200),
    (["127.0.0.0/8", "::1/128"], "127.0.0.2", 200),
    ([], "127.0.0.1", 403),
])
async def test_metrics_are_served_only_to_allow_from(
    state_dir: Path, allow_from: list[str], source: str, expected: int,
) -> None:
    async with running_server(make_config(state_dir, metrics={"allow_from": allow_from})) as server:
        status, text = await scrape(server, source)
    assert status == expected
    if expected == 403:
        assert "rpc_requests_total" not in text
        assert "allow_from" in text
    else:
        assert "# TYPE rpc_requests_total counter" in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
async def test_promtool_finds_no_problem_in_the_real_output(osnova: RunningServer) -> None:
    async with osnova.client(admin=True) as client:
        await client.call("status.get")
        await client.post({"jsonrpc": "2.0", "method": "nope", "id": 1})
        await client.post({"jsonrpc": "2.0", "method": "apps.uninstall", "id": 1})
        code = (await client.call("pairing.start"))["pairing"]["code"]
        await client.call("pairing.complete", {"token": code})
        await client.post({"jsonrpc": "2.0", "method": "auth.refresh", "params": ["wrong"], "id": 1})
    assert await post_rpc(osnova, "{}", "not.a.jwt") == 401
    osnova.runtime.bans.ban("192.0.2.1", "test")
    _, text = await scrape(osnova)
    for name in ("process_cpu_seconds_total", "osnova_build_info", "osnova_devices", "osnova_apps",
                 "osnova_auth_failures_total", "osnova_bans_total", "osnova_banned_addresses"):
        assert f"\n{name}" in text, name
    checked = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


def rendered(metrics: Metrics) -> Samples:
    """What /metrics would show for `metrics` right now."""
    metrics.publish()
    body, _ = render(metrics.registry, [])
    return parse(body.decode())


@pytest.mark.parametrize("seconds", [0.0, 0.0001, 0.0005, 0.00050001, 0.001, 0.3, 10.0, 10.5])
def test_a_duration_counts_in_every_bucket_whose_bound_it_does_not_exceed(seconds: float) -> None:
    metrics = Metrics()
    metrics.observe_call("status.get", "ok", seconds, None)  # type: ignore[arg-type]
    samples = rendered(metrics)
    buckets = {
        dict(labels)["le"]: count for (name, labels), count in samples.items()
        if name == "rpc_request_duration_seconds_bucket"
    }
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    for le, count in buckets.items():
        assert count == (1 if seconds <= float(le) else 0), f"le={le}"
    assert value(samples, "rpc_request_duration_seconds_count", method="status.get") == 1
    assert value(samples, "rpc_request_duration_seconds_sum", method="status.get") == pytest.approx(seconds)


def test_scraping_twice_shows_totals_not_doubled_counts() -> None:
    metrics = Metrics()
    for _ in range(2):
        metrics.observe_call("status.get", "ok", 0.002, None)  # type: ignore[arg-type]
        metrics.observe_http("/rpc", 200)
        metrics.ws_messages.inc({"direction": "in"})
    first = rendered(metrics)
    metrics.observe_call("status.get", "ok", 0.002, None)  # type: ignore[arg-type]
    second = rendered(metrics)
    assert value(first, "rpc_requests_total", method="status.get", outcome="ok") == 2
    assert value(second, "rpc_requests_total", method="status.get", outcome="ok") == 3
    assert value(second, "rpc_request_duration_seconds_bucket", method="status.get", le="0.0025") == 3
    assert value(second, "rpc_request_duration_seconds_sum", method="status.get") == pytest.approx(0.006)
    assert value(second, "http_requests_total", route="/rpc", status="200") == 2
    assert value(second, "ws_messages_total", direction="in") == 2


def test_a_message_of_mixed_calls_counts_each_by_method_and_outcome() -> None:
    metrics = Metrics()
    metrics.observe_calls([
        ("status.get", "ok", 0.001, 0.0, None), ("status.get", "ok", 0.003, 0.0, None),
        ("apps.list", "forbidden", 0.0001, 0.0, None), ("status.get", "internal_error", 0.02, 0.0, None),
        ("apps.list", "ok", 0.3, 0.0, None),
    ])
    samples = rendered(metrics)
    assert value(samples, "rpc_requests_total", method="status.get", outcome="ok") == 2
    assert value(samples, "rpc_requests_total", method="status.get", outcome="internal_error") == 1
    assert value(samples, "rpc_requests_total", method="apps.list", outcome="forbidden") == 1
    assert value(samples, "rpc_requests_total", method="apps.list", outcome="ok") == 1
    assert value(samples, "rpc_request_duration_seconds_count", method="status.get") == 3
    assert value(samples, "rpc_request_duration_seconds_bucket", method="status.get", le="0.0025") == 1
    assert value(samples, "rpc_request_duration_seconds_sum", method="apps.list") == pytest.approx(0.3001)


async def test_process_and_build_info_are_exported(osnova: RunningServer) -> None:
    """process_* as every exporter has them, and osnova_build_info naming the version."""
    samples = parse((await scrape(osnova))[1])
    assert value(samples, "osnova_build_info", version=__version__) == 1
    assert 0 < value(samples, "process_cpu_seconds_total") <= sum(os.times()[:2]) + 0.01
    assert 10_000_000 < value(samples, "process_resident_memory_bytes") < value(samples, "process_virtual_memory_bytes")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(50)]
    try:
        more = parse((await scrape(osnova))[1])
    finally:
        for fd in held:
            os.close(fd)
    assert value(more, "process_open_fds") - value(samples, "process_open_fds") >= 50
    assert value(samples, "process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    started = value(samples, "process_start_time_seconds")
    # The process started before it imported this module (boot time is whole seconds: 1 s of slack).
    assert _IMPORTED_AT - 86_400 < started <= _IMPORTED_AT + 1


async def test_devices_apps_auth_failures_and_bans(state_dir: Path, tmp_path: Path) -> None:
    """Gauges follow pairing, revocation and installs; failed authentications are counted by reason; bans too."""
    config = make_config(state_dir, ban={"max_failures": 3, "ignore": []})
    (tmp_path / "notes.json").write_text(json.dumps(manifest()))
    async with running_server(config) as server:
        samples = parse((await scrape(server, "127.0.0.2"))[1])
        for role in ("member", "owner"):
            for revoked in ("true", "false"):
                assert value(samples, "osnova_devices", role=role, revoked=revoked) == 0
                assert ("osnova_devices", frozenset({("role", role), ("revoked", revoked)})) in samples
        assert value(samples, "osnova_apps") == 0
        assert value(samples, "osnova_bans_total") == 0 and value(samples, "osnova_banned_addresses") == 0
        async with server.client(admin=True) as admin:
            for _ in range(3):
                code = (await admin.call("pairing.start"))["pairing"]["code"]
                grant = await admin.call("pairing.complete", {"token": code})
            await admin.call("devices.revoke", {"device_id": grant["device_id"]})
            await admin.call("apps.install", {"manifest_uri": (tmp_path / "notes.json").as_uri()})
            answer = await admin.post({"jsonrpc": "2.0", "method": "auth.refresh", "params": {"refresh_token": "x"}, "id": 1})
            assert answer["error"]["code"] == -32002
        assert await post_rpc(server, '{"jsonrpc":"2.0","method":"status.get","id":1}', "not.a.jwt") == 401
        assert await post_rpc(server, '{"jsonrpc":"2.0","method":"status.get","id":1}', "not.a.jwt") == 401
        samples = parse((await scrape(server, "127.0.0.2"))[1])
        assert value(samples, "osnova_devices", role="member", revoked="false") == 2
        assert value(samples, "osnova_devices", role="member", revoked="true") == 1
        assert value(samples, "osnova_devices", role="owner", revoked="false") == 0
        assert value(samples, "osnova_apps") == 1
        assert value(samples, "osnova_auth_failures_total", reason="refresh_token") == 1
        assert value(samples, "osnova_auth_failures_total", reason="access_token") == 2
        # The third failure from 127.0.0.1 banned it (so this test scrapes from 127.0.0.2).
        assert value(samples, "osnova_bans_total") == 1
        assert value(samples, "osnova_banned_addresses") == 1
        assert await post_rpc(server, "{}", None) == 403
        await server.runtime.bans.lift("127.0.0.1")
        samples = parse((await scrape(server, "127.0.0.2"))[1])
        assert value(samples, "osnova_bans_total") == 1 and value(samples, "osnova_banned_addresses") == 0
