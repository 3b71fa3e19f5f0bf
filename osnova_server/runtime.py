"""The objects one running server holds, built at start and closed at stop, in mirror order.

Methods reach everything through `ctx.runtime`; nothing here knows about HTTP, so the same
runtime serves `/rpc`, `/ws` and the CLI's tests alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import aiojobs

from osnova_server.config import Config
from osnova_server.events import EventBus
from osnova_server.logs import AUDIT_LOGGER_NAME, audit
from osnova_server.metrics import Metrics
from osnova_server.rpc.context import Context
from osnova_server.rpc.protocol import CallObserver
from osnova_server.security.ratelimit import RateLimiter
from osnova_server.security.secret import load_or_create_secret
from osnova_server.security.tokens import Claims, TokenAuthority
from osnova_server.store import Store

_LOGGER = logging.getLogger(__name__)

ACTIVE_SESSION_WINDOW: Final = 300.0


@dataclass(slots=True)
class Runtime:
    """Everything a running server keeps; `config` is replaced on SIGHUP reloads."""

    config: Config
    secret: bytes
    store: Store
    events: EventBus
    tokens: TokenAuthority
    limiter: RateLimiter
    scheduler: aiojobs.Scheduler
    started_at: float = field(default_factory=time.monotonic)
    # The web layer installs the real count of open authenticated WebSockets.
    connection_count: Callable[[], int] = lambda: 0
    # device id -> wall-clock time it was last seen with a valid token.
    last_seen: dict[str, float] = field(default_factory=dict)

    @property
    def uptime(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self.started_at

    def reload(self, config: Config) -> None:
        """Apply what a SIGHUP may change while running: rate limits (and the config itself)."""
        self.limiter.reconfigure(config.rate_limit.requests_per_second, config.rate_limit.burst_size)
        self.config = config

    def record_seen(self, claims: Claims) -> None:
        """Note that a device used a valid token now (kept in memory, flushed periodically)."""
        if claims.device_id is not None:
            self.last_seen[claims.device_id] = time.time()

    def active_sessions(self) -> int:
        """Distinct devices seen in the last five minutes."""
        cutoff = time.time() - ACTIVE_SESSION_WINDOW
        return sum(1 for seen in self.last_seen.values() if seen >= cutoff)

    def record_auth_failure(self, remote: str) -> None:
        """Count a failed authentication from `remote` towards a ban."""

    def call_observer(self, metrics: Metrics) -> CallObserver:
        """The hook run after every RPC call: metrics, and one audit line."""
        observe = metrics.observe_call
        audit_enabled = logging.getLogger(AUDIT_LOGGER_NAME).isEnabledFor

        def observer(method: str, outcome: str, seconds: float, ctx: Context) -> None:
            observe(method, outcome, seconds, ctx)
            if audit_enabled(logging.INFO):
                audit(
                    "rpc", principal=ctx.principal, method=method, outcome=outcome,
                    duration_ms=round(seconds * 1000, 3), remote=ctx.remote, transport=ctx.transport,
                )

        return observer


@asynccontextmanager
async def open_runtime(config: Config) -> AsyncIterator[Runtime]:
    """Build the runtime for `config`; everything opened is closed again in reverse order."""
    async with AsyncExitStack() as stack:
        state_dir = config.state_dir
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = load_or_create_secret(config)
        store = await Store.open(state_dir)
        stack.push_async_callback(store.close)
        scheduler = aiojobs.Scheduler(close_timeout=2.0)
        stack.push_async_callback(scheduler.close)
        runtime = Runtime(
            config=config,
            secret=secret,
            store=store,
            events=EventBus(),
            tokens=TokenAuthority(secret, config.auth.token_expiry),
            limiter=RateLimiter(config.rate_limit.requests_per_second, config.rate_limit.burst_size),
            scheduler=scheduler,
        )
        runtime.tokens.load_revoked(d.device_id for d in store.devices() if d.revoked)
        yield runtime
