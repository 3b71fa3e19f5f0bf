"""The engines the cluster tests stand up are real, reachable, and stopped by PID."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from tests import services
from tests.servers import bound_loopback_socket


def test_redis_answers_and_stops(own_redis: services.RedisServer) -> None:
    """redis-server answers PING on its port and is gone after stop."""
    ping = subprocess.run(["redis-cli", "-p", str(own_redis.port), "PING"], capture_output=True, text=True)
    assert ping.stdout.strip() == "PONG"
    assert own_redis.process is not None
    pid = own_redis.process.pid
    own_redis.stop()
    assert not services._port_open(own_redis.port)
    assert not Path(f"/proc/{pid}").exists()


def test_postgres_runs_unprivileged_and_makes_databases(own_postgres: services.PostgresServer) -> None:
    """The postmaster runs as a non-root user; each new database starts empty."""
    assert own_postgres.pid is not None
    uid = os.stat(f"/proc/{own_postgres.pid}").st_uid
    assert uid != 0
    url = own_postgres.new_database()
    database = url.rsplit("/", 1)[1]
    assert own_postgres.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database) == "0"
    assert own_postgres.psql("SELECT 40 + 2") == "42"
    own_postgres.stop()
    assert not services._port_open(own_postgres.port)


async def test_haproxy_balances_over_healthy_backends(haproxy: Callable[[list[int]], services.HAProxy]) -> None:
    """Requests through HAProxy reach the backends round robin; a dead backend is skipped."""
    names: list[str] = []
    runners = []
    ports = []
    for name in ("a", "b"):
        app = web.Application()

        async def health(request: web.Request, name: str = name) -> web.Response:
            return web.json_response({"status": "healthy", "name": name})

        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = bound_loopback_socket()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
        ports.append(sock.getsockname()[1])
    dead = services.free_port()
    proxy = haproxy([*ports, dead])
    import asyncio

    def fetch() -> str:
        with urllib.request.urlopen(f"{proxy.url}/health", timeout=5) as answer:
            import json

            return str(json.loads(answer.read())["name"])

    try:
        for _ in range(6):
            names.append(await asyncio.to_thread(fetch))
    finally:
        for runner in runners:
            await runner.cleanup()
    assert set(names) == {"a", "b"}
