"""Rate-limit buckets shared by every process: one atomic Lua script per charge.

The script refills and charges a bucket (a Redis hash) in one step, on Redis's clock, so two
processes charging the same device at once cannot both spend its last token. Buckets expire once
idle long enough to be full again. While Redis is down each process charges its own in-memory
RateLimiter, so callers are still limited (per process) rather than not at all.
"""

from __future__ import annotations

import math
from typing import Final

from osnova_server.cluster.link import PREFIX, REDIS_ERRORS, RedisLink
from osnova_server.security.ratelimit import RateLimiter

BUCKET_PREFIX: Final = PREFIX + "bucket:"

# KEYS[1]: the bucket. ARGV: rate, burst, cost, idle ms. Returns the seconds to wait, as text
# (Lua numbers would be truncated to integers in the reply).
CHARGE_SCRIPT: Final = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
end
local wait = 0
if cost > burst then
  wait = math.max((burst - tokens) / rate, 1 / rate)
elseif cost > tokens then
  wait = (cost - tokens) / rate
else
  tokens = tokens - cost
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return tostring(wait)
"""


class SharedRateLimiter:
    """Allows `rate` requests per second per key across every process, bursts up to `burst`."""

    __slots__ = ("_charge", "_link", "_local")

    def __init__(self, link: RedisLink, rate: float, burst: float) -> None:
        self._link = link
        # Checks the limits and is the fallback while Redis is down.
        self._local = RateLimiter(rate, burst)
        self._charge = link.client.register_script(CHARGE_SCRIPT)

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._local.rate

    @property
    def burst(self) -> float:
        """Capacity of a bucket."""
        return self._local.burst

    def reconfigure(self, rate: float, burst: float) -> None:
        """Apply new limits (SIGHUP); each process applies its own config."""
        self._local.reconfigure(rate, burst)

    async def acquire(self, key: str, cost: int = 1) -> float:
        """Spend `cost` tokens of `key`'s shared bucket: 0.0 if allowed, else the seconds to wait."""
        if not self._link.up:
            return self._local.take(key, cost)
        idle_ms = max(1000, math.ceil(self.burst / self.rate * 1000) + 1000)
        try:
            wait = await self._charge(keys=[BUCKET_PREFIX + key], args=[self.rate, self.burst, cost, idle_ms])
        except REDIS_ERRORS as err:
            self._link.mark_down(err)
            return self._local.take(key, cost)
        return float(wait)
