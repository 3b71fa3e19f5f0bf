"""ConnectionPool and ClientConnection: slots, the authenticating limit, fan-out and backpressure."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
from aiohttp import web

from osnova_server.events import Event
from osnova_server.metrics import Metrics
from osnova_server.security.tokens import Claims, Scope
from osnova_server.web.pool import (
    MAX_AUTHENTICATING,
    MAX_AUTHENTICATING_PER_ADDRESS,
    ClientConnection,
    ConnectionPool,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims_of(device_id: str | None, expires_in: float = 3600.0) -> Claims:
    """Claims as the token authority would verify them."""
    scope = Scope.ADMIN if device_id is None else Scope.DEVICE
    now = time.time()
    return Claims(device_id or "admin", device_id, scope, "jti", now, now + expires_in)


def connection_in(pool: ConnectionPool, max_queue_bytes: int = 1 << 20, address: str = "192.0.2.1") -> ClientConnection:
    """A connection over a WebSocket that was never upgraded (nothing goes on a wire)."""
    return ClientConnection(pool, web.WebSocketResponse(), address, max_queue_bytes=max_queue_bytes)


def gauge(metrics: Metrics) -> float:
    """The active_connections value."""
    value = metrics.active_connections.get({})
    assert isinstance(value, (int, float))
    return float(value)


async def test_slots_are_bounded_by_max_clients_and_freed_by_release() -> None:
    metrics = Metrics()
    pool = ConnectionPool(max_clients=2, metrics=metrics)
    first, second, third = (connection_in(pool) for _ in range(3))
    assert pool.admit(first) and pool.admit(second)
    assert pool.full and len(pool) == 2 and gauge(metrics) == 2
    assert not pool.admit(third)
    assert len(pool) == 2
    pool.release(first)
    pool.release(first)  # idempotent
    assert len(pool) == 1 and gauge(metrics) == 1
    assert pool.admit(third)
    assert {c.id for c in pool} == {second.id, third.id}


async def test_authenticating_sockets_hold_no_slot_and_are_bounded() -> None:
    pool = ConnectionPool(max_clients=1)
    waiting = [connection_in(pool, address=f"192.0.2.{i // 4}") for i in range(MAX_AUTHENTICATING)]
    assert all(pool.wait_for_auth(c) for c in waiting)
    assert not pool.wait_for_auth(connection_in(pool, address="192.0.2.99"))
    assert pool.auth_refusal("192.0.2.99") == "16 WebSockets are authenticating at once"
    assert pool.authenticating == MAX_AUTHENTICATING and len(pool) == 0 and not pool.full
    assert pool.admit(waiting[0])  # moves from waiting to a slot
    assert pool.authenticating == MAX_AUTHENTICATING - 1 and len(pool) == 1
    assert not pool.admit(waiting[1])  # no slot left: it is no longer waiting either
    assert pool.authenticating == MAX_AUTHENTICATING - 2
    assert len(pool.everyone()) == 1 + MAX_AUTHENTICATING - 2


async def test_of_device_finds_only_that_devices_connections() -> None:
    pool = ConnectionPool(max_clients=5)
    owners = ["phone", "phone", "tablet", None]
    connections = [connection_in(pool) for _ in owners]
    for connection, owner in zip(connections, owners, strict=True):
        connection.authenticate(claims_of(owner))
        pool.admit(connection)
    assert pool.of_device("phone") == connections[:2]
    assert pool.of_device("laptop") == []
    for connection in connections:
        connection.close(1000, "")


async def test_idle_uses_the_injected_clock_and_spares_connections_with_calls_running() -> None:
    clock = Clock()
    pool = ConnectionPool(max_clients=5, clock=clock)
    quiet, chatty, working = (connection_in(pool) for _ in range(3))
    for connection in (quiet, chatty, working):
        pool.admit(connection)
    clock.now += 10
    chatty.touch()
    working.call_started()
    clock.now += 5
    assert pool.idle(15) == [quiet]
    assert pool.idle(16) == []
    assert set(pool.idle(5)) == {quiet, chatty}
    working.call_ended()
    assert set(pool.idle(15)) == {quiet, working}


async def test_deliver_encodes_once_and_reaches_only_subscribers() -> None:
    pool = ConnectionPool(max_clients=5)
    subscribed, other, not_subscribed = (connection_in(pool) for _ in range(3))
    for connection in (subscribed, other, not_subscribed):
        pool.admit(connection)
    subscribed.subscribe(["apps.installed", "config.changed"])
    other.subscribe(["apps.installed"])
    not_subscribed.subscribe(["apps.uninstalled"])
    other.unsubscribe(["apps.installed"])
    subscribed.subscribe(["apps.installed"])  # twice is once
    pool.deliver(Event("apps.installed", {"id": "ant://a", "name": "A", "version": "1"}))
    assert len(subscribed.outgoing) == 1
    assert not other.outgoing and not not_subscribed.outgoing
    assert json.loads(subscribed.outgoing[0]) == {
        "jsonrpc": "2.0", "method": "event",
        "params": {"topic": "apps.installed", "data": {"id": "ant://a", "name": "A", "version": "1"}},
    }


async def test_encoded_once_for_every_subscriber() -> None:
    pool = ConnectionPool(max_clients=5)
    first, second = connection_in(pool), connection_in(pool)
    for connection in (first, second):
        pool.admit(connection)
        connection.subscribe(["devices.revoked"])
    pool.deliver(Event("devices.revoked", {"device_id": "d"}))
    assert first.outgoing[0] is second.outgoing[0]


async def test_at_most_4_sockets_wait_for_auth_from_one_address() -> None:
    pool = ConnectionPool(max_clients=1)
    waiting = [connection_in(pool, address="192.0.2.7") for _ in range(MAX_AUTHENTICATING_PER_ADDRESS)]
    assert all(pool.wait_for_auth(c) for c in waiting)
    assert pool.auth_refusal("192.0.2.7") == "192.0.2.7 already has 4 WebSockets authenticating"
    assert not pool.wait_for_auth(connection_in(pool, address="192.0.2.7"))
    assert pool.wait_for_auth(connection_in(pool, address="192.0.2.8"))
    pool.release(waiting[0])
    assert pool.auth_refusal("192.0.2.7") is None


async def test_one_device_or_the_admin_holds_at_most_max_clients_per_device() -> None:
    pool = ConnectionPool(max_clients=10, max_clients_per_device=2)
    for owner in ("phone", "phone", None, None):
        connection = connection_in(pool)
        assert pool.admit(connection, claims_of(owner))
        connection.claims = claims_of(owner)
    assert pool.slot_refusal(claims_of("phone")) == "[server] max_clients_per_device = 2"
    assert pool.slot_refusal(claims_of(None)) == "[server] max_clients_per_device = 2"
    assert pool.slot_refusal(claims_of("tablet")) is None
    assert not pool.admit(connection_in(pool), claims_of("phone"))
    assert len(pool) == 4


async def test_the_queue_is_bounded_in_bytes_and_a_full_one_closes_nothing() -> None:
    clock = Clock()
    pool = ConnectionPool(max_clients=1, clock=clock)
    connection = connection_in(pool, max_queue_bytes=10)
    pool.admit(connection)
    assert connection.send(b"12345") and connection.has_room
    assert connection.send(b"67890") and not connection.has_room  # 10 bytes wait: no more reading
    assert connection.send(b"an event")  # still queued: only a client that reads nothing is closed
    assert connection.queued_bytes == 18 and connection.close_code is None
    clock.now += 29
    assert pool.not_reading(30) == [] and pool.idle(1) == []  # waiting for the client is not idleness
    clock.now += 1
    assert pool.not_reading(30) == [connection]


async def test_a_reader_waiting_for_room_sees_the_close() -> None:
    pool = ConnectionPool(max_clients=1)
    connection = connection_in(pool, max_queue_bytes=1)
    pool.admit(connection)
    connection.send(b"xx")
    waiter = asyncio.get_running_loop().create_task(connection.wait_for_room())
    await asyncio.sleep(0)
    assert not waiter.done()
    connection.close(1008, "slow")
    await asyncio.wait_for(waiter, 1)
    await connection.wait_closed()


@pytest.mark.parametrize(
    ("first", "second"),
    [((4401, "revoked"), (4408, "idle")), ((1001, "shutting down"), (1008, "slow"))],
)
async def test_the_first_close_wins_and_frees_the_slot_at_once(
    first: tuple[int, str], second: tuple[int, str],
) -> None:
    pool = ConnectionPool(max_clients=1)
    connection = connection_in(pool)
    pool.admit(connection)
    connection.close(*first)
    assert len(pool) == 0 and not pool.full
    connection.close(*second)
    assert connection.close_code == first[0]
    await connection.wait_closed()


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [("phone", "phone"), (None, None)],
)
async def test_authenticate_records_the_device(device_id: str | None, expected: str | None) -> None:
    pool = ConnectionPool(max_clients=1)
    connection = connection_in(pool)
    claims = claims_of(device_id)
    connection.authenticate(claims)
    assert connection.claims is claims and connection.device_id == expected
    connection.close(1000, "")


async def test_an_expired_token_closes_the_connection_4401() -> None:
    pool = ConnectionPool(max_clients=1)
    connection = connection_in(pool)
    pool.admit(connection)
    connection.authenticate(claims_of("phone", expires_in=0.05))
    await _eventually(lambda: connection.close_code is not None)
    assert connection.close_code == 4401 and len(pool) == 0


async def _eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll `check` every 10 ms until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
