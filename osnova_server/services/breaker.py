"""A circuit breaker per manifest host, so a dead host costs one fast refusal, not a timeout per call.

After `threshold` failures in a row a host's circuit opens: calls for it fail at once with
-32006 and `data.retry_after` for `open_seconds`. Then exactly one trial fetch is let through
(half-open) while other calls keep failing fast; its outcome closes the circuit or opens it again.

Written here rather than taken from `purgatory` or `aiobreaker` (both read): both let every
concurrent call through while half-open (not "one trial decides"), both read the wall clock
(`time.time`, `datetime.utcnow`), which jumps with NTP and cannot be injected for tests, and
neither bounds how many circuits it keeps, while here any client naming a new host adds one.
aiobreaker's `time_remaining` also mixes `datetime.now()` with `utcnow()`, so its wait is off by
the UTC offset. What remains is ~100 lines of plain state.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from osnova_server.errors import FetchFailed

_LOGGER = logging.getLogger(__name__)

FAILURE_THRESHOLD: Final = 5
OPEN_SECONDS: Final = 60.0
# Hosts remembered at most; the least recently used closed host is forgotten first.
MAX_TRACKED_HOSTS: Final = 1024
# Open hosts named in `status.get`; the count says how many there are in all.
MAX_LISTED_HOSTS: Final = 20

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
STATES: Final = (CLOSED, OPEN, HALF_OPEN)

T = TypeVar("T")


class CircuitOpen(FetchFailed):
    """A host's circuit is open: the fetch was not tried."""


class _Circuit:
    """One host's state: failures in a row, when it opened, whether a trial is under way."""

    __slots__ = ("failures", "opened_at", "state")

    def __init__(self) -> None:
        self.failures = 0
        self.opened_at = 0.0
        self.state = CLOSED


class HostBreakers:
    """The circuits of every manifest host seen recently, with counts of their state changes."""

    __slots__ = ("_circuits", "_clock", "open_seconds", "threshold", "transitions")

    def __init__(
        self,
        *,
        threshold: int = FAILURE_THRESHOLD,
        open_seconds: float = OPEN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._circuits: OrderedDict[str, _Circuit] = OrderedDict()
        # to-state -> how many times a circuit entered it (a bounded metric label).
        self.transitions: dict[str, int] = dict.fromkeys(STATES, 0)

    async def call(
        self, host: str, fetch: Callable[[], Awaitable[T]], counts: Callable[[BaseException], bool]
    ) -> T:
        """Run `fetch` for `host` unless its circuit is open; `counts(exc)` says if a failure is the host's.

        Any other exception means the host did answer (a 404, a body too large): that closes the
        circuit like a success. A cancelled fetch says nothing either way.
        """
        circuit = self._admit(host)
        try:
            result = await fetch()
        except Exception as exc:
            if counts(exc):
                self._failed(host, circuit)
            else:
                self._succeeded(host, circuit)
            raise
        except BaseException:
            self._settled(circuit)
            raise
        self._succeeded(host, circuit)
        return result

    def state(self, host: str) -> str:
        """The host's state as a caller would find it now."""
        circuit = self._circuits.get(host.lower())
        if circuit is None:
            return CLOSED
        if circuit.state == OPEN and self._remaining(circuit) <= 0:
            return HALF_OPEN
        return circuit.state

    def service(self) -> dict[str, Any]:
        """The `manifest-hosts` entry of `status.get`: degraded while any host's circuit is open."""
        blocked = [
            (host, circuit) for host, circuit in self._circuits.items() if circuit.state != CLOSED
        ]
        entry: dict[str, Any] = {
            "name": "manifest-hosts",
            "kind": "circuit-breaker",
            "status": "degraded" if blocked else "ok",
        }
        if blocked:
            entry["open"] = len(blocked)
            entry["hosts"] = [
                {"host": host, "retry_after": self._retry_after(circuit)}
                for host, circuit in blocked[:MAX_LISTED_HOSTS]
            ]
        return entry

    # -- transitions -----------------------------------------------------------------------

    def _admit(self, host: str) -> _Circuit:
        """The host's circuit if a call may go ahead; raise CircuitOpen if not."""
        key = host.lower()
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._circuits[key] = _Circuit()
            self._forget_oldest()
        else:
            self._circuits.move_to_end(key)
        if circuit.state == CLOSED:
            return circuit
        if circuit.state == OPEN and self._remaining(circuit) <= 0:
            # This call is the one trial; others keep failing fast until it settles.
            self._move(key, circuit, HALF_OPEN)
            return circuit
        retry_after = self._retry_after(circuit)
        raise CircuitOpen(
            f"manifest host {key} failed {self.threshold} times in a row; "
            f"not trying it again for {retry_after} s",
            data={"retry_after": retry_after},
        )

    def _failed(self, host: str, circuit: _Circuit) -> None:
        """Count a failure of the host; open the circuit at the threshold or after a failed trial."""
        circuit.failures += 1
        if circuit.state == HALF_OPEN or circuit.failures >= self.threshold:
            circuit.opened_at = self._clock()
            self._move(host.lower(), circuit, OPEN)

    def _succeeded(self, host: str, circuit: _Circuit) -> None:
        """The host answered: close its circuit and clear its failures."""
        circuit.failures = 0
        if circuit.state != CLOSED:
            self._move(host.lower(), circuit, CLOSED)

    def _settled(self, circuit: _Circuit) -> None:
        """The call was cancelled, which says nothing of the host."""
        if circuit.state == HALF_OPEN:
            # No verdict: let the next call be the trial instead of blocking the host for good.
            circuit.state = OPEN
            circuit.opened_at = self._clock() - self.open_seconds

    def _move(self, host: str, circuit: _Circuit, state: str) -> None:
        """Change state, count it, and log the change."""
        circuit.state = state
        self.transitions[state] += 1
        if state == OPEN:
            _LOGGER.warning(
                "manifest host %s failed %d times in a row; refusing fetches from it for %g s",
                host, circuit.failures, self.open_seconds,
            )
        elif state == CLOSED:
            _LOGGER.info("manifest host %s answers again; fetching from it as usual", host)

    def _remaining(self, circuit: _Circuit) -> float:
        """Seconds until an open circuit may try again."""
        return circuit.opened_at + self.open_seconds - self._clock()

    def _retry_after(self, circuit: _Circuit) -> int:
        """Whole seconds to wait (at least 1: a trial may be under way)."""
        return max(1, math.ceil(self._remaining(circuit)))

    def _forget_oldest(self) -> None:
        """Keep at most MAX_TRACKED_HOSTS circuits, dropping closed ones, least recently used first."""
        excess = len(self._circuits) - MAX_TRACKED_HOSTS
        if excess <= 0:
            return
        for key in [k for k, c in self._circuits.items() if c.state == CLOSED][:excess]:
            del self._circuits[key]
