"""Prometheus metrics with aioprometheus: the collectors and tallies of one server.

`web/metrics.py` serves them on GET /metrics.

Label values come only from bounded sets (registered method names, a fixed list of outcomes,
route templates, status codes), so no client can grow the number of series by sending odd
method names or paths. Each application gets its own collector registry, so two servers in one
process (as in the tests) never share counts.

Counting happens on every request, so it is kept to a dict update: calls, durations and answers
are tallied in plain dicts keyed by label values, and copied into the aioprometheus collectors
only when /metrics is scraped. (aioprometheus turns every label dict into a sorted JSON string
on each `inc` or `observe`; that cost ~5 µs a call, measured, on the hot path.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from aioprometheus import Counter, Gauge, Histogram, Registry
from aioprometheus.histogram import Histogram as HistogramValue

from osnova_server import __version__, process_metrics
from osnova_server.rpc.context import Context

if TYPE_CHECKING:
    from osnova_server.rpc.protocol import FinishedCall

# Seconds; a trivial call takes ~100 µs, a manifest fetch up to the fetch timeout.
DEVICE_ROLES: Final = ("member", "owner")
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Household:
    """What the server keeps, counted at scrape time: devices by role and state, apps, failures, bans."""

    devices: Mapping[tuple[str, bool], int]  # (role, revoked) -> devices
    apps: int
    auth_failures: Mapping[str, int]  # reason -> failed authentications since start
    bans_imposed: int
    banned_addresses: int
    # Manifest-host circuit breakers: to-state -> transitions since start.
    breaker_transitions: Mapping[str, int] = field(default_factory=dict)
    # With tracing on: reason -> spans not exported since start.
    spans_dropped: Mapping[str, int] = field(default_factory=dict)


class LabelledCounts:
    """A counter tallied in a dict by label values and published into `collector` at scrape time."""

    __slots__ = ("collector", "counts")

    def __init__(self, collector: Counter) -> None:
        self.collector = collector
        self.counts: dict[tuple[tuple[str, str], ...], int] = {}

    def inc(self, labels: Mapping[str, str]) -> None:
        """Count one event with these labels."""
        key = tuple(labels.items())
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def publish(self) -> None:
        """Copy the tallies into the collector."""
        for key, count in self.counts.items():
            self.collector.set(dict(key), count)


class Metrics:
    """The collectors of one server, and the tallies the hot path writes into."""

    __slots__ = (
        "registry", "rpc_requests", "rpc_duration", "http_requests", "active_connections",
        "ws_messages", "_calls", "_answers", "_process",
        "devices", "apps", "auth_failures", "bans", "banned", "certificate_expiry", "breaker_transitions", "spans_dropped",
    )

    def __init__(self) -> None:
        self.registry = Registry()
        registry = self.registry
        self.rpc_requests = Counter("rpc_requests_total", "JSON-RPC calls by method and outcome.", registry=registry)
        self.rpc_duration = Histogram(
            "rpc_request_duration_seconds", "Time to run a JSON-RPC call, by method.",
            buckets=DURATION_BUCKETS, registry=registry,
        )
        self.http_requests = Counter("http_requests_total", "HTTP answers by route and status.", registry=registry)
        self.active_connections = Gauge(
            "active_connections", "Open authenticated WebSocket connections.", registry=registry,
        )
        self.ws_messages = LabelledCounts(
            Counter("ws_messages_total", "WebSocket messages by direction.", registry=registry),
        )
        self.active_connections.set({}, 0)
        Gauge("osnova_build_info", "The running version; always 1.", registry=registry).set({"version": __version__}, 1)
        self._process = process_metrics.collectors(registry)
        self.devices = Gauge("osnova_devices", "Paired devices by role and whether revoked.", registry=registry)
        self.apps = Gauge("osnova_apps", "Installed apps.", registry=registry)
        self.auth_failures = Counter(
            "osnova_auth_failures_total", "Failed authentications by what was presented.", registry=registry,
        )
        self.bans = Counter("osnova_bans_total", "Addresses banned since start.", registry=registry)
        self.banned = Gauge("osnova_banned_addresses", "Addresses banned now.", registry=registry)
        # Set only under TLS, at start and whenever another certificate is served (reload, renewal).
        self.certificate_expiry = Gauge(
            "tls_certificate_expiry_timestamp_seconds", "When the served TLS certificate expires (Unix time).",
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "circuit_breaker_transitions_total",
            "Manifest-host circuit breakers entering a state (open, half_open, closed).",
            registry=registry,
        )
        self.spans_dropped = Counter(
            "tracing_spans_dropped_total",
            "Spans not exported, by reason: queue_full (the collector is slow or down) or export_failed.",
            registry=registry,
        )
        # method -> ({outcome: calls}, [count per bucket..., count above the last, sum of seconds]),
        # one lookup per method; (route, status) -> answers.
        self._calls: dict[str, tuple[dict[str, int], list[float]]] = {}
        self._answers: dict[tuple[str, int], int] = {}

    def observe_call(self, method: str, outcome: str, seconds: float, ctx: Context) -> None:
        """Count one RPC call and record its duration."""
        self.observe_calls(((method, outcome, seconds, 0.0, None),))

    def observe_calls(self, calls: Iterable[FinishedCall]) -> None:
        """Count the RPC calls of one message and record their durations."""
        by_method = self._calls
        last = None
        outcomes: dict[str, int] = {}
        durations: list[float] = []
        for method, outcome, seconds, _, _ in calls:
            if method is not last:  # a batch's members often call one method: looked up once
                entry = by_method.get(method)
                if entry is None:
                    entry = by_method[method] = ({}, [0.0] * (len(DURATION_BUCKETS) + 2))
                outcomes, durations = entry
                last = method
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            # bisect_left finds the first bound >= seconds: Prometheus buckets are `le`.
            durations[bisect_left(DURATION_BUCKETS, seconds)] += 1
            durations[-1] += seconds

    def observe_certificate(self, expires_at: float) -> None:
        """Record when the certificate now served expires."""
        self.certificate_expiry.set({}, expires_at)

    def observe_http(self, route: str, status: int) -> None:
        """Count one HTTP answer."""
        answers = self._answers
        key = (route, status)
        answers[key] = answers.get(key, 0) + 1

    def publish(self, household: Household | None = None) -> None:
        """Copy the tallies (and what the household holds) into the collectors, just before they are rendered."""
        process_metrics.publish(self._process)
        if household is not None:
            self._publish_household(household)
        for method, (outcomes, durations) in self._calls.items():
            for outcome, count in outcomes.items():
                self.rpc_requests.set({"method": method, "outcome": outcome}, count)
            value = HistogramValue(*DURATION_BUCKETS)
            cumulative = 0
            for bound, in_bucket in zip(value.buckets, durations):
                cumulative += int(in_bucket)
                value.buckets[bound] = cumulative
            value.observations = cumulative
            value.sum = durations[-1]
            self.rpc_duration.set_value({"method": method}, value)
        for (route, status), count in self._answers.items():
            self.http_requests.set({"route": route, "status": str(status)}, count)
        self.ws_messages.publish()

    def _publish_household(self, household: Household) -> None:
        """Set the gauges of devices, apps and bans and the failure counters."""
        # Every (role, revoked) pair is set, so a count that falls to 0 shows 0 rather than its old value.
        for role in sorted({*DEVICE_ROLES, *(role for role, _ in household.devices)}):
            for revoked in (False, True):
                labels = {"role": role, "revoked": "true" if revoked else "false"}
                self.devices.set(labels, household.devices.get((role, revoked), 0))
        self.apps.set({}, household.apps)
        for reason, count in household.auth_failures.items():
            self.auth_failures.set({"reason": reason}, count)
        self.bans.set({}, household.bans_imposed)
        self.banned.set({}, household.banned_addresses)
        for state, count in household.breaker_transitions.items():
            self.breaker_transitions.set({"to": state}, count)
        for reason, count in household.spans_dropped.items():
            self.spans_dropped.set({"reason": reason}, count)
