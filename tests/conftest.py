"""Shared fixtures: a real osnova-server on an ephemeral loopback port, with real SQLite in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server import config as config_module
from osnova_server.client import OsnovaClient
from osnova_server.config import Config
from osnova_server.events import Event
from osnova_server.runtime import Runtime
from osnova_server.security.tokens import Scope
from osnova_server.server import Server
from osnova_server.web.keys import STATE_KEY
from tests import services
from tests.services import free_port

__all__ = ["free_port"]

TEST_SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef"


def make_config(state_dir: Path, **sections: dict[str, Any]) -> Config:
    """A config for tests: loopback, port 0, state in `state_dir`, plus per-section overrides."""
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address="127.0.0.1:0", state_dir=str(state_dir))
    config = config_module.replace(config, "auth", jwt_secret=TEST_SECRET)
    config = config_module.replace(config, "logging", level="warning", format="text")
    config = config_module.replace(config, "rate_limit", requests_per_second=10_000.0, burst_size=10_000)
    # Every test client is on loopback, which [ban] ignore spares by default: ban it like any address.
    config = config_module.replace(config, "ban", ignore=[])
    # A test that binds a wildcard address must not advertise on this machine's real LAN.
    config = config_module.replace(config, "discovery", mdns=False)
    for section, changes in sections.items():
        config = config_module.replace(config, section, **changes)
    return config


@dataclass
class RunningServer:
    """A server started by a test, and what tests need to talk to it."""

    server: Server
    url: str

    @property
    def runtime(self) -> Runtime:
        """The live runtime (store, tokens, events...)."""
        return self.server.app[STATE_KEY].runtime

    @property
    def config(self) -> Config:
        """The config it runs with."""
        return self.server.config

    def admin_token(self, ttl: int = 600) -> str:
        """A fresh admin token."""
        return self.runtime.tokens.issue(Scope.ADMIN, None, ttl)[0]

    def client(self, token: str | None = None, *, admin: bool = False, **kwargs: Any) -> OsnovaClient:
        """An OsnovaClient for this server (admin token when `admin`)."""
        return OsnovaClient(self.url, self.admin_token() if admin else token, **kwargs)


@asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[RunningServer]:
    """Start a real server for `config` in this event loop; stop it afterwards."""
    server = Server(config)
    await server.start()
    try:
        yield RunningServer(server, f"{config.scheme}://127.0.0.1:{server.port}")
    finally:
        await server.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh state directory."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


# A test module that sets `BOTH_ENGINES = True` runs each of its tests that use the `config`
# fixture (or `osnova`) twice: on SQLite and on PostgreSQL, so the two engines cannot drift.
ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise `store_url` over the engines in modules that ask for both."""
    if getattr(metafunc.module, "BOTH_ENGINES", False) and "store_url" in metafunc.fixturenames:
        metafunc.parametrize("store_url", ENGINES, indirect=True)


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """`[store] url` for the test: empty (SQLite in the state dir) or a fresh PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def config(state_dir: Path, store_url: str) -> Config:
    """The default test config (on PostgreSQL for the `postgresql` run of a BOTH_ENGINES module)."""
    return make_config(state_dir, store={"url": store_url}) if store_url else make_config(state_dir)


@pytest.fixture
async def osnova(config: Config) -> AsyncIterator[RunningServer]:
    """A running server with the default test config."""
    async with running_server(config) as running:
        yield running


@pytest.fixture
def events(osnova: RunningServer) -> Iterator[list[Event]]:
    """Every event the running server publishes while the test runs."""
    seen: list[Event] = []
    remove = osnova.runtime.events.listen(seen.append)
    yield seen
    remove()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


# -- the server as a separate process, for lifecycle and CLI tests ---------------------------


def write_config(path: Path, config: Config) -> Path:
    """Write `config` as a TOML file and return its path."""
    config_module.write(config, path)
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `python -m osnova_server ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "osnova_server", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


class ServerProcess:
    """`osnova-server serve` in a child process, with its port read from a config we wrote."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        """Start it; `prefix` wraps the command (e.g. `ip netns exec NS` to run it on another machine)."""
        self.config_path = config_path
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "osnova_server", "--config", str(config_path), "serve"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )

    def wait_ready(self, url: str, timeout: float = 15.0) -> float:
        """Poll /health until it answers; return seconds taken."""
        import urllib.request

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early: {self.process.stderr.read() if self.process.stderr else ''}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.02)
        raise AssertionError("server did not become ready")

    def stop(self, timeout: float = 15.0) -> tuple[int, str]:
        """SIGTERM the server and return (exit code, stderr)."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """Start server processes; every one still running at the end is stopped."""
    started: list[ServerProcess] = []

    def start(config_path: Path, env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> ServerProcess:
        process = ServerProcess(config_path, env, prefix)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# -- real engines for cluster mode (tests/services.py) ----------------------------------------


@pytest.fixture(scope="session")
def engines_dir() -> Iterator[Path]:
    """One scratch dir per test session (per xdist worker) for the engines' files."""
    import shutil

    path = services.scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_session(engines_dir: Path) -> Iterator[services.RedisServer]:
    """One redis-server for the whole session (per worker); tests flush it."""
    reason = services.missing("redis-server", "redis-cli")
    if reason:
        pytest.skip(reason)
    directory = engines_dir / "redis"
    directory.mkdir()
    server = services.RedisServer(directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: services.RedisServer) -> str:
    """The URL of an empty Redis."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture(scope="session")
def pg_template(engines_dir: Path) -> Path:
    """A PostgreSQL data directory made by initdb once per session, copied by each server."""
    reason = services.missing("postgresql")
    if reason:
        pytest.skip(reason)
    directory = engines_dir / "pg-template"
    directory.mkdir()
    return services.make_pg_template(directory)


@pytest.fixture(scope="session")
def postgres_session(engines_dir: Path, pg_template: Path) -> Iterator[services.PostgresServer]:
    """One PostgreSQL server for the whole session (per worker); each test gets its own database."""
    directory = engines_dir / "pg-session"
    directory.mkdir()
    server = services.PostgresServer(directory, pg_template)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_session: services.PostgresServer) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return postgres_session.new_database()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[services.RedisServer]:
    """A redis-server of this test's own, which the test may stop and start."""
    reason = services.missing("redis-server", "redis-cli")
    if reason:
        pytest.skip(reason)
    server = services.RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres(engines_dir: Path, pg_template: Path) -> Iterator[services.PostgresServer]:
    """A PostgreSQL server of this test's own, which the test may stop and start."""
    import shutil
    import uuid

    directory = engines_dir / f"pg-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    server = services.PostgresServer(directory, pg_template)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[list[int]], services.HAProxy]]:
    """Start HAProxy in front of the given loopback ports; stopped at the end."""
    reason = services.missing("haproxy")
    if reason:
        pytest.skip(reason)
    started: list[services.HAProxy] = []

    def start(backends: list[int]) -> services.HAProxy:
        proxy = services.HAProxy(tmp_path, backends)
        proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@contextmanager
def lock_holder(state_dir: Path, kind: str = "serve") -> Iterator[subprocess.Popen[str]]:
    """Another process holding `state_dir`'s lock as a `kind` (serve, migrate, restore) until the block ends.

    It is SIGKILLed at the end, the way a crash would end it: the kernel then drops the flock.
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import time\n"
            "from pathlib import Path\n"
            "from osnova_server.statelock import StateLock\n"
            f"lock = StateLock.acquire(Path({str(state_dir)!r}), {kind!r})\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
