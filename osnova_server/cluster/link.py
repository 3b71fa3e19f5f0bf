"""The connection to Redis: commands, one pub/sub channel shared by every process, and health.

Every process subscribes to one channel and reads its messages in order, so an invalidation
published before an event is applied before that event is delivered. When Redis cannot be
reached the link is marked down at once: the shared pieces then answer from what this process
knows (see each module), and the listener reconnects with exponential backoff, marking the link
up again when it has subscribed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

_LOGGER = logging.getLogger(__name__)

PREFIX: Final = "osnova:"
CHANNEL: Final = PREFIX + "bus"
CONNECT_TIMEOUT: Final = 1.0
COMMAND_TIMEOUT: Final = 2.0
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0
# How long the listener waits for a message before it pings to find out whether Redis is there.
LISTEN_POLL: Final = 1.0

# What a Redis failure looks like from redis-py: its own errors, and the OS's.
REDIS_ERRORS: Final = (RedisError, OSError, asyncio.TimeoutError)

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class RedisUnavailable(Exception):
    """Redis cannot be reached right now; the message says what still works."""


class RedisLink:
    """Commands and the bus of one process, and whether Redis answers right now."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Tells this process's own messages apart on the shared channel.
        self.origin = secrets.token_hex(8)
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT,
            decode_responses=False, retry_on_timeout=False,
        )
        self._handlers: dict[str, Handler] = {}
        self._on_up: list[Callable[[], Awaitable[None]]] = []
        self.up = False
        self._ready = asyncio.Event()
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10_000)

    def on(self, kind: str, handler: Handler) -> None:
        """Run `handler` for every message of `kind` published by another process."""
        self._handlers[kind] = handler

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` each time the link is back after being down (not at the first connect)."""
        self._on_up.append(callback)

    def mark_down(self, err: BaseException) -> None:
        """Note that a command failed: Redis is treated as unreachable until the listener is back."""
        if self.up:
            _LOGGER.warning("Redis at %s is unreachable (%s); working on what this process knows", self.url, err)
        self.up = False

    async def connect(self, timeout: float = 5.0) -> None:
        """Wait (at start) until subscribed; go on degraded if Redis does not answer in time."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            _LOGGER.warning("Redis at %s did not answer at start; running degraded until it does", self.url)

    def publish(self, kind: str, **data: Any) -> None:
        """Queue a message for every other process; dropped (and logged) while Redis is down."""
        message = json.dumps({"kind": kind, "from": self.origin, **data}, separators=(",", ":")).encode()
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            _LOGGER.warning("cluster bus backlog full; dropped a %s message", kind)

    async def publish_now(self, kind: str, **data: Any) -> None:
        """Publish a message before going on (not through the queue); skipped while Redis is down."""
        if not self.up:
            return
        message = json.dumps({"kind": kind, "from": self.origin, **data}, separators=(",", ":")).encode()
        try:
            await self.client.publish(CHANNEL, message)
        except REDIS_ERRORS as err:
            self.mark_down(err)

    async def run_sender(self) -> None:
        """Background job: publish queued messages in order."""
        while True:
            message = await self._outbox.get()
            if not self.up:
                _LOGGER.debug("Redis down; a bus message is not shared")
                continue
            try:
                await self.client.publish(CHANNEL, message)
            except REDIS_ERRORS as err:
                self.mark_down(err)

    async def run_listener(self) -> None:
        """Background job: read the channel, reconnecting with backoff; the link's health."""
        backoff = BACKOFF_FIRST
        while True:
            pubsub: Any = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                if not self.up:
                    _LOGGER.info("Redis at %s is reachable; sharing state", self.url)
                self.up = True
                if self._ready.is_set():
                    await self._came_back()
                self._ready.set()
                backoff = BACKOFF_FIRST
                await self._listen(pubsub)
            except REDIS_ERRORS as err:
                self.mark_down(err)
            finally:
                try:
                    await pubsub.aclose()
                except REDIS_ERRORS:
                    pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _came_back(self) -> None:
        """Run the on-up callbacks; one that fails is logged and skipped."""
        for callback in self._on_up:
            try:
                await callback()
            except Exception as err:  # noqa: BLE001 - e.g. the database is down too: the refresher retries
                _LOGGER.warning("catching up after Redis came back failed: %s", err)

    async def _listen(self, pubsub: Any) -> None:
        """Hand each message to its handler, in order; ping when idle to notice a dead Redis."""
        while True:
            message = await pubsub.get_message(timeout=LISTEN_POLL)
            if message is None:
                await self.client.ping()
                self.up = True
                continue
            try:
                body = json.loads(message["data"])
            except (ValueError, TypeError):
                _LOGGER.warning("ignored a malformed cluster bus message")
                continue
            if not isinstance(body, dict) or body.get("from") == self.origin:
                continue
            handler = self._handlers.get(str(body.get("kind")))
            if handler is None:
                continue
            try:
                await handler(body)
            except Exception:
                _LOGGER.exception("cluster bus handler for %s failed", body.get("kind"))

    async def ping(self) -> bool:
        """Whether Redis answers a PING now."""
        try:
            return bool(await self.client.ping())
        except REDIS_ERRORS as err:
            self.mark_down(err)
            return False

    async def close(self) -> None:
        """Close the connections."""
        await self.client.aclose()
