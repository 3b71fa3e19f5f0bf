"""Tests of the token-bucket rate limiter: the arithmetic, Retry-After, and bounded memory."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from osnova_server.security import ratelimit
from osnova_server.security.ratelimit import (
    RateLimiter,
    TokenBucket,
    retry_after_header,
)
from tests.clock import FakeClock

START = 1000.0


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock."""
    return FakeClock(START)


def test_burst_then_refusal(clock: FakeClock) -> None:
    """A full bucket allows `burst` requests at once, then says how long to wait."""
    limiter = RateLimiter(rate=1.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("a") == pytest.approx(1.0), "a refusal must not deduct tokens"
    assert limiter.take("b") == 0.0, "keys have separate buckets"


def test_refill_math(clock: FakeClock) -> None:
    """Tokens come back at `rate` per second, fractionally, and never above `burst`."""
    limiter = RateLimiter(rate=4.0, burst=2, clock=clock)
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(0.25)
    clock.advance(0.125)  # half a token
    assert limiter.take("k") == pytest.approx(0.125)
    clock.advance(0.125)
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(0.25)
    clock.advance(3600)  # capped at the burst
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.25)]


def test_cost_is_all_or_nothing(clock: FakeClock) -> None:
    """A batch costing more than what is left is refused whole and deducts nothing."""
    limiter = RateLimiter(rate=2.0, burst=5, clock=clock)
    assert limiter.take("k", cost=4) == 0.0
    assert limiter.take("k", cost=3) == pytest.approx(1.0)  # (3 - 1) / 2
    assert limiter.take("k", cost=1) == 0.0
    assert limiter.take("k", cost=1) == pytest.approx(0.5)


def test_cost_above_burst_is_always_refused(clock: FakeClock) -> None:
    """Asking for more than a bucket holds never succeeds, and creates no bucket."""
    limiter = RateLimiter(rate=2.0, burst=4, clock=clock)
    assert limiter.take("new", cost=5) == pytest.approx(0.5)  # full bucket: at least 1/rate
    assert len(limiter) == 0
    assert limiter.take("k", cost=4) == 0.0
    assert limiter.take("k", cost=5) == pytest.approx(2.0)  # the time to fill the burst
    clock.advance(3600)
    assert limiter.take("k", cost=5) == pytest.approx(0.5)
    assert limiter.take("k", cost=4) == 0.0, "the refusals deducted nothing"


@pytest.mark.parametrize(
    ("wait", "header"),
    [
        (0.0, "1"),
        (0.001, "1"),
        (0.5, "1"),
        (1.0, "1"),
        (1.0 + 1e-12, "1"),  # float noise does not add a second
        (0.1 + 0.2 + 0.7, "1"),
        (1.01, "2"),
        (1.5, "2"),
        (59.2, "60"),
    ],
)
def test_retry_after_header(wait: float, header: str) -> None:
    """Retry-After is whole seconds, rounded up, at least 1."""
    assert retry_after_header(wait) == header


def test_retry_after_from_limiter(clock: FakeClock) -> None:
    """A limiter refusal at 100 req/s still tells the client to wait at least one second."""
    limiter = RateLimiter(rate=100.0, burst=1, clock=clock)
    limiter.take("k")
    wait = limiter.take("k")
    assert 0 < wait <= 0.01
    assert retry_after_header(wait) == "1"


def test_reconfigure(clock: FakeClock) -> None:
    """New limits apply at once; existing buckets are capped at the new burst."""
    limiter = RateLimiter(rate=1.0, burst=10, clock=clock)
    limiter.take("k")  # 9 left
    limiter.reconfigure(rate=10.0, burst=2)
    assert limiter.rate == 10.0
    assert limiter.burst == 2.0
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


@pytest.mark.parametrize(
    ("rate", "burst", "max_buckets"),
    [(0.0, 10, 10), (-1.0, 10, 10), (float("inf"), 10, 10), (1.0, 0.5, 10), (1.0, 10, 0)],
)
def test_bad_parameters(rate: float, burst: float, max_buckets: int) -> None:
    """Limits that cannot work are refused when the limiter is built."""
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(rate=rate, burst=burst, max_buckets=max_buckets)


def test_least_recently_used_bucket_is_evicted(clock: FakeClock) -> None:
    """Over `max_buckets`, the bucket used longest ago goes; recently used ones keep their state."""
    limiter = RateLimiter(rate=0.001, burst=1, max_buckets=2, clock=clock)
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0
    assert limiter.take("a") > 0  # "a" is now the most recently used
    assert limiter.take("c") == 0.0  # evicts "b"
    assert len(limiter) == 2
    assert limiter.take("a") > 0, "'a' kept its empty bucket"
    assert limiter.take("b") == 0.0, "'b' was evicted and starts full"


def test_idle_buckets_are_swept(clock: FakeClock) -> None:
    """Buckets idle long enough to be full again are dropped; active ones stay."""
    limiter = RateLimiter(rate=10.0, burst=10, clock=clock)  # full again after 1 s
    for index in range(500):
        limiter.take(f"old-{index}")
    clock.advance(0.5)
    limiter.take("recent")
    clock.advance(0.6)  # old ones idle 1.1 s, "recent" 0.6 s
    for _ in range(ratelimit.SWEEP_EVERY):
        limiter.take("busy")
    assert len(limiter) == 2
    assert limiter.take("recent") == 0.0


def test_idle_seconds_shorter_than_refill_is_clamped(clock: FakeClock) -> None:
    """A short idle_seconds cannot make eviction hand out tokens a bucket has not earned."""
    limiter = RateLimiter(rate=1.0, burst=10, idle_seconds=0.1, clock=clock)
    for _ in range(10):
        limiter.take("k")
    clock.advance(1.0)
    for _ in range(ratelimit.SWEEP_EVERY):
        limiter.take("other")
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(1.0), "one token refilled, not a fresh bucket"


def test_sweeping_never_changes_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A limiter sweeping on every take answers exactly like one that keeps every bucket."""
    rng = random.Random(1234)
    clock = FakeClock(START)
    keeper = RateLimiter(rate=5.0, burst=4, idle_seconds=1e12, clock=clock)
    sweeper = RateLimiter(rate=5.0, burst=4, clock=clock)
    monkeypatch.setattr(ratelimit, "SWEEP_EVERY", 1)
    answers = 0
    for _ in range(20_000):
        clock.advance(rng.choice([0.0, 0.0, 0.01, 0.05, 0.3, 1.0]))
        key = f"k{rng.randrange(40)}"
        cost = rng.choice([1, 1, 1, 2, 3, 5])
        expected = keeper.take(key, cost)
        assert sweeper.take(key, cost) == expected
        answers += expected > 0
    assert len(sweeper) < len(keeper) == 40, "the sweeper did drop buckets"
    assert answers > 1000, "the sequence exercised refusals"


def test_many_distinct_keys_stay_bounded(clock: FakeClock) -> None:
    """A flood of 100,000 distinct keys never holds more than max_buckets buckets."""
    limiter = RateLimiter(rate=1.0, burst=5, max_buckets=1000, clock=clock)
    keys = [f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}" for index in range(100_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            assert limiter.take(key) == 0.0
            assert len(limiter) <= 1000
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(limiter) == 1000
    # 1000 buckets take ~200 kB; 100,000 would take ~20 MB.
    assert grown < 1_000_000


def test_token_bucket_has_slots() -> None:
    """Buckets are created per caller, so they carry no __dict__."""
    bucket = TokenBucket(1.0, 2.0)
    assert not hasattr(bucket, "__dict__")
    assert (bucket.tokens, bucket.updated) == (1.0, 2.0)
