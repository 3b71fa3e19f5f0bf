"""The objects one running server holds, built at start and closed at stop, in mirror order.

Methods reach everything through `ctx.runtime`; nothing here knows about HTTP, so the same
runtime serves `/rpc`, `/ws` and the CLI's tests alike.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import aiojobs

from osnova_server import __version__
from osnova_server.config import Config
from osnova_server.errors import Unauthorized
from osnova_server.events import Bus, Event, EventBus
from osnova_server.logs import AUDIT_LOGGER_NAME, audit, audit_calls
from osnova_server.metrics import Metrics
from osnova_server.rpc.context import Context
from osnova_server.rpc.protocol import CallObserver, FinishedCall
from osnova_server.security.ratelimit import Limiter, RateLimiter
from osnova_server.security.roles import Role, receives
from osnova_server.security.secret import load_or_create_secret
from osnova_server.security.tokens import REVOKED, Claims, TokenAuthority, TokenInvalid, unverified_device_id
from osnova_server.services.admin_sessions import MemorySessionStore, SessionStore
from osnova_server.services.apps import AppCatalog
from osnova_server.services.bans import BanList
from osnova_server.services.devices import DeviceRegistry
from osnova_server.services.fetch_slots import FetchSlots
from osnova_server.services.identity import Identity, load_or_create_identity
from osnova_server.services.pairing import PairingBook, PairingCodes
from osnova_server.services.settings import ServerSettings
from osnova_server.slots import LocalSlots, SlotLedger
from osnova_server.statelock import StateLock
from osnova_server.store import Store
from osnova_server.tracing import Tracing, start_tracing

if TYPE_CHECKING:
    from osnova_server.cluster.runtime import Cluster

_LOGGER = logging.getLogger(__name__)

ACTIVE_SESSION_WINDOW: Final = 300.0

# What a failed authentication presented: the label values of osnova_auth_failures_total.
AuthFailure = Literal[
    "authorization_header", "access_token", "websocket_auth", "pairing_code", "refresh_token", "admin_login_link",
]


@dataclass(slots=True)
class Runtime:
    """Everything a running server keeps; `config` is replaced on SIGHUP reloads."""

    config: Config
    secret: bytes
    store: Store
    events: Bus
    tokens: TokenAuthority
    limiter: Limiter
    scheduler: aiojobs.Scheduler
    identity: Identity
    apps: AppCatalog
    settings: ServerSettings
    bans: BanList
    pairing: PairingBook
    devices: DeviceRegistry
    slots: SlotLedger = field(default_factory=LocalSlots)
    # Set in cluster mode ([cluster] redis_url): the Redis link and the shared pieces.
    cluster: Cluster | None = None
    # This process's code book; in cluster mode the shared one takes its keyed digests from it.
    local_codes: PairingCodes | None = None
    # The OpenTelemetry tracer, only with [tracing] enabled.
    tracing: Tracing | None = None
    # The admin page's login links and browser sessions (a cluster passes a shared store).
    admin_sessions: SessionStore = field(default_factory=MemorySessionStore)
    started_at: float = field(default_factory=time.monotonic)
    # The web layer installs the real count of open authenticated WebSockets.
    connection_count: Callable[[], int] = lambda: 0
    # device id -> wall-clock time it was last seen with a valid token.
    last_seen: dict[str, float] = field(default_factory=dict)
    # reason -> failed authentications since start, for /metrics.
    auth_failures: dict[str, int] = field(default_factory=dict)

    @property
    def uptime(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self.started_at

    def reload(self, config: Config) -> None:
        """Apply what a SIGHUP may change while running: rate limits, bans (and the config itself)."""
        self.limiter.reconfigure(config.rate_limit.requests_per_second, config.rate_limit.burst_size)
        self.bans.reconfigure(config.ban)
        self.config = config

    @property
    def clustered(self) -> bool:
        """Whether this process is one of several ([store] url or [cluster] redis_url set)."""
        return self.cluster is not None or bool(self.config.store.url)

    @property
    def instance_name(self) -> str:
        """What status calls this process: `[cluster] instance_name`, else host name and port."""
        return self.config.cluster.instance_name or f"{socket.gethostname()}:{self.config.port}"

    def rotate_secret(self, secret: bytes) -> None:
        """Sign with a new JWT secret: old access tokens and outstanding pairing codes stop working.

        Refresh tokens are argon2 hashes in the store, independent of the secret, so devices
        trade them for access tokens signed with the new one.
        """
        self.tokens.replace_secret(secret)
        # A new key makes every outstanding code's digest unreachable, the shared ones included.
        voided = self.local_codes.rekey(secret) if self.local_codes is not None else 0
        self.secret = secret
        _LOGGER.warning(
            "the JWT secret was replaced: every access token issued before is refused and %d "
            "outstanding pairing codes are void; devices get new tokens with their refresh tokens",
            voided,
        )
        audit("auth.secret_rotated", codes_voided=voided)

    def describe_instance(self) -> dict[str, Any]:
        """What the cluster's list of instances says about this process."""
        config = self.config
        return {
            "address": f"{config.scheme}://{config.server.bind_address}",
            "version": __version__,
            "uptime": round(self.uptime, 3),
            "connections": self.connection_count(),
        }

    async def verify_again(self, token: str, refusal: TokenInvalid) -> Claims:
        """After `refusal`, the claims anyway if the token's device was just paired on another process.

        On a shared store a device paired through another process reaches this one's memory a
        moment after its tokens reach the device; a token refused as of an unknown device is
        worth one look in the database. Anything else raises `refusal` again.
        """
        if refusal.reason != REVOKED or not self.store.shared:
            raise refusal
        device_id = unverified_device_id(token)
        if device_id is None or self.tokens.is_revoked(device_id) or self.store.device(device_id) is not None:
            raise refusal
        if await self.store.find_device(device_id) is None:
            raise refusal
        return self.tokens.verify(token)

    def record_seen(self, claims: Claims) -> None:
        """Note that a device used a valid token now (kept in memory, flushed periodically)."""
        if claims.device_id is not None:
            self.last_seen[claims.device_id] = time.time()

    def receives(self, claims: Claims | None, event: Event) -> bool:
        """Whether the holder of `claims` may be pushed `event` (CONTRACT 4's event rules)."""
        if claims is None:
            return False
        if claims.device_id is None:
            return True
        try:
            role: Role | None = self.devices.role_of(claims.device_id)
        except Unauthorized:
            role = None
        return receives(role, claims.device_id, event)

    def active_sessions(self) -> int:
        """Distinct devices seen in the last five minutes."""
        cutoff = time.time() - ACTIVE_SESSION_WINDOW
        return sum(1 for seen in self.last_seen.values() if seen >= cutoff)

    def record_auth_failure(self, remote: str, reason: AuthFailure) -> None:
        """Count a failed authentication from `remote` towards a ban, and in the metrics."""
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1
        self.bans.record_failure(remote)

    def call_observer(self, metrics: Metrics) -> CallObserver:
        """The hook run after every message's calls: their metrics, and an audit line for each."""
        observe = metrics.observe_calls
        audit_enabled = logging.getLogger(AUDIT_LOGGER_NAME).isEnabledFor

        def observer(calls: list[FinishedCall], ctx: Context) -> None:
            observe(calls)
            if audit_enabled(logging.INFO):
                audit_calls(ctx.principal, ctx.remote, ctx.transport, calls)

        return observer


class StateDirUnusable(Exception):
    """`[server] state_dir` cannot be created or is not a directory; the message says what to do."""


def make_state_dir(path: Path) -> None:
    """Create the state dir (0700) if missing; StateDirUnusable, in one line, when it cannot be."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        # Under a file (ENOTDIR), a file itself (EEXIST), under /proc (ENOENT), read-only, no rights...
        reason = err.strerror or type(err).__name__
        raise StateDirUnusable(
            f"cannot use {path} as [server] state_dir: {reason}; set it to a directory this user may create and write"
        ) from None


@asynccontextmanager
async def open_runtime(config: Config) -> AsyncIterator[Runtime]:
    """Build the runtime for `config`; everything opened is closed again in reverse order."""
    async with AsyncExitStack() as stack:
        state_dir = config.state_dir
        make_state_dir(state_dir)
        # Before anything in the state dir is read or written: a second server stops here.
        lock = StateLock.acquire(state_dir)
        stack.callback(lock.release)
        secret = load_or_create_secret(config)
        tracing = start_tracing(config.tracing) if config.tracing.enabled else None
        if tracing is not None:
            # Closed last, so the spans of everything closing before it are exported too.
            stack.push_async_callback(tracing.shutdown)
        store = await Store.open(state_dir, config.store.url, tracing=tracing)
        stack.push_async_callback(store.close)
        scheduler = aiojobs.Scheduler(close_timeout=2.0)
        stack.push_async_callback(scheduler.close)
        identity = await asyncio.to_thread(load_or_create_identity, state_dir)
        cluster = _open_cluster(config)
        if cluster is not None:
            stack.push_async_callback(cluster.close)
        events: Bus = cluster.events if cluster is not None else EventBus()
        limiter: Limiter = (
            cluster.limiter if cluster is not None
            else RateLimiter(config.rate_limit.requests_per_second, config.rate_limit.burst_size)
        )
        tokens = TokenAuthority(
            secret, config.auth.token_expiry, known_device=lambda device_id: store.device(device_id) is not None,
        )
        bans = BanList(store, config.ban)
        await bans.load()
        local_codes = PairingCodes(secret)
        pairing: PairingBook = cluster.pairing(local_codes) if cluster is not None else local_codes
        last_seen: dict[str, float] = {}
        runtime = Runtime(
            config=config,
            secret=secret,
            store=store,
            events=events,
            tokens=tokens,
            limiter=limiter,
            scheduler=scheduler,
            identity=identity,
            apps=AppCatalog(
                store, events, config.apps,
                fetch_slots=FetchSlots(config.limits.max_concurrent_fetches, config.apps.fetch_timeout),
                tracing=tracing,
            ),
            # Read at each call, so a SIGHUP-reloaded advertised_address is honoured.
            settings=ServerSettings(store, events, lambda: runtime.config.server.advertised_address),
            bans=bans,
            pairing=pairing,
            devices=DeviceRegistry(store, tokens, events, pairing, last_seen),
            last_seen=last_seen,
            slots=cluster.slots if cluster is not None else LocalSlots(),
            cluster=cluster,
            local_codes=local_codes,
            tracing=tracing,
        )
        if cluster is not None:
            cluster.share_bans(bans)
            cluster.follow_revocations(tokens)
            if config.store.url:
                cluster.follow_store(store, tokens)
            cluster.register_instance(lambda: runtime.instance_name, runtime.describe_instance)
            await cluster.start(scheduler)
        runtime.tokens.load_revoked(d.device_id for d in store.devices() if d.revoked)
        # Bans and last-seen times are written by background jobs, and once more at shutdown,
        # before the scheduler and the store close.
        stack.push_async_callback(bans.flush)
        stack.push_async_callback(runtime.devices.flush_last_seen)
        await scheduler.spawn(bans.run())
        await scheduler.spawn(pairing.run_reaper())
        await scheduler.spawn(runtime.devices.run_last_seen_flusher())
        yield runtime


def _open_cluster(config: Config) -> Cluster | None:
    """The shared state of cluster mode, or None: redis-py is imported only when it is configured."""
    if not config.cluster.redis_url:
        return None
    from osnova_server.cluster.runtime import Cluster

    return Cluster(config)
