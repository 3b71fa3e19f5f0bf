"""A clock that tests move by hand, so that no test sleeps to see time pass."""

from __future__ import annotations


class FakeClock:
    """Stands in for time.time or time.monotonic: returns `now` until the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds
