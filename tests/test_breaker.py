"""Tests for the per-host circuit breaker: its states on a hand-moved clock, then through apps.install."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from osnova_server.client import RpcCallError
from osnova_server.errors import FETCH_FAILED, FetchFailed
from osnova_server.services.breaker import (
    CLOSED,
    HALF_OPEN,
    MAX_TRACKED_HOSTS,
    OPEN,
    CircuitOpen,
    HostBreakers,
)
from osnova_server.services.manifest import HostFailure
from tests.clock import FakeClock
from tests.conftest import RunningServer, make_config, running_server
from tests.servers import loopback_app
from tests.test_manifest import VALID

HOST = "manifests.example"


async def _failing() -> bytes:
    raise HostFailure("fetching https://manifests.example/app.json failed: HTTP 503")


async def _not_found() -> bytes:
    raise FetchFailed("fetching https://manifests.example/app.json failed: HTTP 404")


async def _fine() -> bytes:
    return b"{}"


def _counts(exc: BaseException) -> bool:
    return isinstance(exc, HostFailure)


async def _fail_times(breakers: HostBreakers, host: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(HostFailure):
            await breakers.call(host, _failing, _counts)


# -- the state machine on a fake clock -----------------------------------------------------------


async def test_five_failures_in_a_row_open_the_circuit_and_the_sixth_is_refused_unfetched() -> None:
    clock = FakeClock(1000.0)
    breakers = HostBreakers(clock=clock)
    await _fail_times(breakers, HOST, 4)
    assert breakers.state(HOST) == CLOSED
    await _fail_times(breakers, HOST, 1)
    assert breakers.state(HOST) == OPEN
    fetched = []

    async def counted() -> bytes:
        fetched.append(1)
        return b"{}"

    with pytest.raises(CircuitOpen) as refused:
        await breakers.call(HOST, counted, _counts)
    assert fetched == []
    assert refused.value.code == FETCH_FAILED
    assert refused.value.data == {"retry_after": 60}
    assert HOST in refused.value.message and "60 s" in refused.value.message
    clock.advance(45.5)
    with pytest.raises(CircuitOpen) as later:
        await breakers.call(HOST, counted, _counts)
    assert later.value.data == {"retry_after": 15}
    assert breakers.transitions == {CLOSED: 0, OPEN: 1, HALF_OPEN: 0}


async def test_a_success_between_failures_starts_the_count_again() -> None:
    breakers = HostBreakers(clock=FakeClock(0.0))
    await _fail_times(breakers, HOST, 4)
    assert await breakers.call(HOST, _fine, _counts) == b"{}"
    await _fail_times(breakers, HOST, 4)
    assert breakers.state(HOST) == CLOSED


async def test_an_answer_that_is_not_the_hosts_fault_does_not_count() -> None:
    breakers = HostBreakers(clock=FakeClock(0.0))
    await _fail_times(breakers, HOST, 4)
    for _ in range(3):
        with pytest.raises(FetchFailed):
            await breakers.call(HOST, _not_found, _counts)
    await _fail_times(breakers, HOST, 4)
    assert breakers.state(HOST) == CLOSED


async def test_after_the_window_one_successful_trial_closes_the_circuit() -> None:
    clock = FakeClock(0.0)
    breakers = HostBreakers(clock=clock)
    await _fail_times(breakers, HOST, 5)
    clock.advance(60.0)
    assert breakers.state(HOST) == HALF_OPEN
    assert await breakers.call(HOST, _fine, _counts) == b"{}"
    assert breakers.state(HOST) == CLOSED
    assert breakers.transitions == {CLOSED: 1, OPEN: 1, HALF_OPEN: 1}
    # Closed means a fresh count: four more failures leave it closed.
    await _fail_times(breakers, HOST, 4)
    assert breakers.state(HOST) == CLOSED


async def test_a_failed_trial_opens_the_circuit_for_another_window() -> None:
    clock = FakeClock(0.0)
    breakers = HostBreakers(clock=clock)
    await _fail_times(breakers, HOST, 5)
    clock.advance(61.0)
    await _fail_times(breakers, HOST, 1)
    assert breakers.state(HOST) == OPEN
    with pytest.raises(CircuitOpen) as refused:
        await breakers.call(HOST, _fine, _counts)
    assert refused.value.data == {"retry_after": 60}
    assert breakers.transitions == {CLOSED: 0, OPEN: 2, HALF_OPEN: 1}


async def test_while_the_trial_runs_other_calls_are_refused() -> None:
    clock = FakeClock(0.0)
    breakers = HostBreakers(clock=clock)
    await _fail_times(breakers, HOST, 5)
    clock.advance(60.0)
    release = asyncio.Event()

    async def slow_trial() -> bytes:
        await release.wait()
        return b"{}"

    trial = asyncio.create_task(breakers.call(HOST, slow_trial, _counts))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen) as refused:
        await breakers.call(HOST, _fine, _counts)
    assert refused.value.data == {"retry_after": 1}
    release.set()
    assert await trial == b"{}"
    assert breakers.state(HOST) == CLOSED


async def test_a_cancelled_trial_leaves_the_next_call_to_be_the_trial() -> None:
    clock = FakeClock(0.0)
    breakers = HostBreakers(clock=clock)
    await _fail_times(breakers, HOST, 5)
    clock.advance(60.0)
    trial = asyncio.create_task(breakers.call(HOST, asyncio.Event().wait, _counts))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert await breakers.call(HOST, _fine, _counts) == b"{}"
    assert breakers.state(HOST) == CLOSED


async def test_hosts_have_their_own_circuits_and_case_does_not_matter() -> None:
    breakers = HostBreakers(clock=FakeClock(0.0))
    await _fail_times(breakers, "Manifests.Example", 5)
    assert breakers.state(HOST) == OPEN
    assert await breakers.call("other.example", _fine, _counts) == b"{}"
    service = breakers.service()
    assert service == {
        "name": "manifest-hosts", "kind": "circuit-breaker", "status": "degraded",
        "open": 1, "hosts": [{"host": HOST, "retry_after": 60}],
    }


async def test_the_number_of_hosts_remembered_is_bounded() -> None:
    breakers = HostBreakers(clock=FakeClock(0.0))
    await _fail_times(breakers, HOST, 5)
    for index in range(MAX_TRACKED_HOSTS + 50):
        await breakers.call(f"host{index}.example", _fine, _counts)
    assert len(breakers._circuits) == MAX_TRACKED_HOSTS
    # The open circuit outlives the flood of closed ones.
    assert breakers.state(HOST) == OPEN


# -- through apps.install on a real server ------------------------------------------------------


class FlakyHost:
    """A loopback manifest host whose answer the test switches: 503, hang, or the manifest."""

    def __init__(self) -> None:
        self.mode = "503"
        self.hits = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.mode == "503":
            return web.json_response({"error": "down"}, status=503)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return web.json_response(VALID)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyHost, str]]:
    """A FlakyHost on an ephemeral loopback port, and its manifest URL."""
    host = FlakyHost()
    app = web.Application()
    app.router.add_get("/app.json", host.handle)
    async with loopback_app(app) as base:
        yield host, f"{base}/app.json?sig=secret-signature"


@pytest.fixture
async def osnova(state_dir: Path) -> AsyncIterator[RunningServer]:
    """A server that may fetch http:// manifests, with a fetch timeout longer than any wait here."""
    config = make_config(state_dir, apps={"allow_http": True, "fetch_timeout": 10.0})
    async with running_server(config) as running:
        yield running


async def _install(osnova: RunningServer, uri: str) -> Any:
    async with osnova.client(admin=True) as client:
        return await client.call("apps.install", {"manifest_uri": uri})


async def test_install_fails_fast_once_a_host_failed_five_times(
    osnova: RunningServer, flaky: tuple[FlakyHost, str], http: Any,
) -> None:
    host, uri = flaky
    clock = FakeClock(0.0)
    osnova.runtime.apps.breakers = breakers = HostBreakers(clock=clock)
    for _ in range(5):
        with pytest.raises(RpcCallError) as failed:
            await _install(osnova, uri)
        assert failed.value.code == FETCH_FAILED and "HTTP 503" in failed.value.message
    assert host.hits == 5
    # Were the host fetched now, the call would wait out the 10 s fetch timeout.
    host.mode = "hang"
    started = time.perf_counter()
    with pytest.raises(RpcCallError) as refused:
        await _install(osnova, uri)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, elapsed  # loose: the point is not waiting for the fetch timeout
    assert host.hits == 5
    assert refused.value.code == FETCH_FAILED
    assert refused.value.data == {"retry_after": 60}
    assert "secret-signature" not in refused.value.message

    async with osnova.client(admin=True) as client:
        status = await client.call("status.get")
        assert await client.call("apps.list") == []
    hosts = [s for s in status["services"] if s["name"] == "manifest-hosts"]
    assert hosts == [{
        "name": "manifest-hosts", "kind": "circuit-breaker", "status": "degraded",
        "open": 1, "hosts": [{"host": "127.0.0.1", "retry_after": 60}],
    }]
    assert status["status"] == "degraded"

    clock.advance(60.0)
    host.mode = "ok"
    assert await _install(osnova, uri) == VALID["id"]
    assert host.hits == 6
    assert breakers.state("127.0.0.1") == CLOSED
    async with http.get(f"{osnova.url}/metrics") as response:
        text = await response.text()
    assert 'circuit_breaker_transitions_total{to="open"} 1' in text
    assert 'circuit_breaker_transitions_total{to="half_open"} 1' in text
    assert 'circuit_breaker_transitions_total{to="closed"} 1' in text


async def test_the_sixth_call_takes_well_under_50_ms(
    osnova: RunningServer, flaky: tuple[FlakyHost, str],
) -> None:
    """Measured at the service, without the HTTP round trip; loose, not a benchmark."""
    host, uri = flaky
    apps = osnova.runtime.apps
    for _ in range(5):
        with pytest.raises(FetchFailed):
            await apps.install(uri, allow_file=False)
    host.mode = "hang"
    started = time.perf_counter()
    with pytest.raises(CircuitOpen):
        await apps.install(uri, allow_file=False)
    assert time.perf_counter() - started < 0.05
    assert host.hits == 5


async def test_a_healthy_host_shows_ok_in_status(osnova: RunningServer) -> None:
    async with osnova.client(admin=True) as client:
        status = await client.call("status.get")
    assert {"name": "manifest-hosts", "kind": "circuit-breaker", "status": "ok"} in status["services"]
