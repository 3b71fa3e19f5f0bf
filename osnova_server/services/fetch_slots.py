"""How many manifest fetches may be in flight: `[limits] max_concurrent_fetches` in all, 2 per caller.

Every fetch holds a socket and a file descriptor for up to `[apps] fetch_timeout` seconds, so a
flood of `apps.install` calls against a slow host must not be allowed to pile them up. A call
that finds no free slot does not wait for one: it is answered -32029 at once, with
`data.retry_after` the whole seconds until the oldest fetch it waits behind must have ended.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from osnova_server.errors import RateLimited

PER_PRINCIPAL: Final = 2


class FetchSlots:
    """The manifest fetches in flight, server-wide and per principal (device id or `admin`)."""

    __slots__ = ("limit", "per_principal", "timeout", "clock", "_in_flight", "_ids")

    def __init__(
        self,
        limit: int,
        timeout: float,
        per_principal: int = PER_PRINCIPAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.per_principal = per_principal
        self.timeout = timeout
        self.clock = clock
        # slot id -> (principal, when its fetch started)
        self._in_flight: dict[int, tuple[str, float]] = {}
        self._ids = itertools.count()

    def in_flight(self, principal: str | None = None) -> int:
        """Fetches running now, of everyone or of one principal."""
        if principal is None:
            return len(self._in_flight)
        return sum(1 for owner, _ in self._in_flight.values() if owner == principal)

    @contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        """Hold a slot for one fetch; RateLimited (-32029) when none is free."""
        if len(self._in_flight) >= self.limit:
            self._refuse(f"the server already runs its [limits] max_concurrent_fetches = {self.limit} manifest fetches",
                         None)
        if self.in_flight(principal) >= self.per_principal:
            self._refuse(f"you already run {self.per_principal} manifest fetches", principal)
        slot = next(self._ids)
        self._in_flight[slot] = (principal, self.clock())
        try:
            yield
        finally:
            del self._in_flight[slot]

    def _refuse(self, reason: str, principal: str | None) -> None:
        """Raise the -32029 answer, saying when the oldest fetch in the way ends at the latest."""
        started = [begun for owner, begun in self._in_flight.values() if principal is None or owner == principal]
        remaining = self.timeout - (self.clock() - min(started)) if started else 1.0
        seconds = max(1, math.ceil(remaining))
        raise RateLimited(
            f"too many manifest fetches in flight: {reason}; retry in {seconds} s",
            data={"retry_after": seconds},
        )


__all__ = ["PER_PRINCIPAL", "FetchSlots"]
