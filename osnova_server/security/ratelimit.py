"""Token-bucket rate limiting per caller (device, admin token or address), in bounded memory.

Buckets live in an `OrderedDict` kept in order of last use, so the least recently used bucket is
always first: evicting it, or sweeping the idle ones, is O(1) per bucket. A bucket idle for
`burst / rate` seconds has refilled completely and is indistinguishable from a fresh one, so the
sweep never changes an answer; only the hard `max_buckets` cap (an LRU eviction of a partly empty
bucket) can, and only under a flood of distinct keys.

Not thread-safe: it is used from the event loop only.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

_LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_BUCKETS: Final = 100_000
# How many `take` calls between two sweeps of idle buckets; each sweep stops at the first
# bucket still in use, so its cost is the number of buckets it drops plus one.
SWEEP_EVERY: Final = 1024
# Float noise such as 2.0000000000000004 s must not become a 3 s Retry-After.
_RETRY_EPSILON: Final = 1e-9


class Limiter(Protocol):
    """What charges a caller: this module's RateLimiter, or cluster mode's shared one."""

    @property
    def rate(self) -> float:
        """Tokens added per second."""

    @property
    def burst(self) -> float:
        """Capacity of a bucket."""

    def reconfigure(self, rate: float, burst: float) -> None:
        """Apply new limits (SIGHUP)."""

    async def acquire(self, key: str, cost: int = 1) -> float:
        """Spend `cost` tokens of `key`'s bucket: 0.0 if allowed, else the seconds to wait."""


class TokenBucket:
    """The tokens left to one caller and when they were last counted."""

    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated

    def __repr__(self) -> str:
        return f"TokenBucket(tokens={self.tokens!r}, updated={self.updated!r})"


class RateLimiter:
    """Allows `rate` requests per second per key, with bursts of up to `burst`."""

    __slots__ = (
        "_buckets",
        "_burst",
        "_clock",
        "_idle",
        "_idle_seconds",
        "_max_buckets",
        "_rate",
        "_takes",
    )

    def __init__(
        self,
        rate: float,
        burst: float,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        idle_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, not {max_buckets}")
        self._max_buckets = max_buckets
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._takes = 0
        self._rate = 1.0
        self._burst = 1.0
        self._idle = 1.0
        self.reconfigure(rate, burst)

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """Capacity of a bucket."""
        return self._burst

    def reconfigure(self, rate: float, burst: float) -> None:
        """Apply new limits (SIGHUP); buckets keep their tokens, capped at the new burst."""
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a positive number, not {rate}")
        if not burst >= 1 or math.isinf(burst):
            raise ValueError(f"burst must be at least 1, not {burst}")
        self._rate = float(rate)
        self._burst = float(burst)
        # Shorter than the time to refill would make eviction hand out tokens; never allow that.
        full_after = self._burst / self._rate
        idle = self._idle_seconds
        self._idle = full_after if idle is None else max(idle, full_after)

    def take(self, key: str, cost: int = 1) -> float:
        """Spend `cost` tokens of `key`'s bucket: 0.0 if allowed, else the seconds to wait."""
        now = self._clock()
        rate = self._rate
        burst = self._burst
        buckets = self._buckets
        self._takes += 1
        if self._takes >= SWEEP_EVERY:
            # Before the lookup, so the bucket about to be charged cannot be swept away.
            self._takes = 0
            self._sweep(now)
        bucket = buckets.get(key)
        if bucket is None:
            tokens = burst
        else:
            tokens = bucket.tokens + (now - bucket.updated) * rate
            if tokens > burst:  # noqa: PLR1730 - a call to min() costs more on this hot path
                tokens = burst
            buckets.move_to_end(key)

        if cost > tokens or cost > burst:
            if bucket is not None:
                # Same state, refilled to now: keeps the order of buckets the order of `updated`.
                bucket.tokens = tokens
                bucket.updated = now
            if cost > burst:
                # Waiting never helps; answer with the time to fill the bucket.
                return max((burst - tokens) / rate, 1.0 / rate)
            return (cost - tokens) / rate

        if bucket is None:
            buckets[key] = TokenBucket(tokens - cost, now)
            if len(buckets) > self._max_buckets:
                buckets.popitem(last=False)
        else:
            bucket.tokens = tokens - cost
            bucket.updated = now
        return 0.0

    async def acquire(self, key: str, cost: int = 1) -> float:
        """`take` behind the Limiter interface (the shared limiter has to ask Redis)."""
        return self.take(key, cost)

    def _sweep(self, now: float) -> None:
        """Drop the buckets, oldest first, that have been idle long enough to be full again."""
        buckets = self._buckets
        horizon = now - self._idle
        dropped = 0
        while buckets:
            oldest = next(iter(buckets.values()))
            if oldest.updated > horizon:
                break
            buckets.popitem(last=False)
            dropped += 1
        if dropped:
            _LOGGER.debug("dropped %d idle rate-limit buckets, %d left", dropped, len(buckets))

    def __len__(self) -> int:
        """Number of buckets held in memory."""
        return len(self._buckets)


def retry_after_header(wait: float) -> str:
    """Render a wait as a `Retry-After` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait - _RETRY_EPSILON)))
