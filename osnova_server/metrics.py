"""Prometheus metrics with aioprometheus, and the GET /metrics view that exposes them.

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

import ipaddress
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Final

from aiohttp import hdrs, web
from aioprometheus import Counter, Gauge, Histogram, Registry
from aioprometheus.histogram import Histogram as HistogramValue
from aioprometheus.renderer import render

from osnova_server.rpc.context import Context
from osnova_server.web.errors import json_error
from osnova_server.web.keys import REMOTE_KEY

# Seconds; a trivial call takes ~100 µs, a manifest fetch up to the fetch timeout.
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE: Final = "(unmatched)"


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
        "ws_messages", "_calls", "_durations", "_answers",
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
        # (method, outcome) -> calls; method -> [count per bucket..., count above the last, sum];
        # (route, status) -> answers.
        self._calls: dict[tuple[str, str], int] = {}
        self._durations: dict[str, list[float]] = {}
        self._answers: dict[tuple[str, int], int] = {}

    def observe_call(self, method: str, outcome: str, seconds: float, ctx: Context) -> None:
        """Count one RPC call and record its duration."""
        calls = self._calls
        key = (method, outcome)
        calls[key] = calls.get(key, 0) + 1
        durations = self._durations.get(method)
        if durations is None:
            durations = self._durations[method] = [0.0] * (len(DURATION_BUCKETS) + 2)
        # bisect_left finds the first bound >= seconds: Prometheus buckets are `le`.
        durations[bisect_left(DURATION_BUCKETS, seconds)] += 1
        durations[-1] += seconds

    def observe_http(self, route: str, status: int) -> None:
        """Count one HTTP answer."""
        answers = self._answers
        key = (route, status)
        answers[key] = answers.get(key, 0) + 1

    def publish(self) -> None:
        """Copy the tallies into the aioprometheus collectors, just before they are rendered."""
        for (method, outcome), count in self._calls.items():
            self.rpc_requests.set({"method": method, "outcome": outcome}, count)
        for method, durations in self._durations.items():
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


def route_label(request: web.BaseRequest) -> str:
    """The matched route template, never the raw path (which a client controls)."""
    info = getattr(request, "match_info", None)
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return canonical if isinstance(canonical, str) and canonical else UNMATCHED_ROUTE


def metrics_view_for(metrics: Metrics, allow_from: Sequence[str]) -> web.Handler:  # type: ignore[name-defined]
    """Build the GET /metrics view, refusing addresses outside `allow_from` with 403."""
    networks = [ipaddress.ip_network(network, strict=False) for network in allow_from]

    async def metrics_view(request: web.Request) -> web.Response:
        try:
            address = ipaddress.ip_address(request[REMOTE_KEY])
        except ValueError:
            address = None
        if address is None or not any(address in network for network in networks):
            return json_error(403, "metrics are served only to [metrics] allow_from addresses")
        metrics.publish()
        body, headers = render(metrics.registry, request.headers.getall(hdrs.ACCEPT, []))
        return web.Response(body=body, headers=headers)

    return metrics_view
