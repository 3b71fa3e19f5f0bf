"""Prometheus metrics with aioprometheus, and the GET /metrics view that exposes them.

Label values come only from bounded sets (registered method names, a fixed list of outcomes,
route templates, status codes), so no client can grow the number of series by sending odd
method names or paths. Each application gets its own collector registry, so two servers in one
process (as in the tests) never share counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from aioprometheus import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render
from aiohttp import hdrs, web

from osnova_server.rpc.context import Context
from osnova_server.web.errors import json_error
from osnova_server.web.keys import REMOTE_KEY

# Seconds; a trivial call takes ~100 µs, a manifest fetch up to the fetch timeout.
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED_ROUTE: Final = "(unmatched)"


class Metrics:
    """The collectors of one server."""

    __slots__ = (
        "registry", "rpc_requests", "rpc_duration", "http_requests", "active_connections",
        "ws_messages", "_label_cache",
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
        self.ws_messages = Counter("ws_messages_total", "WebSocket messages by direction.", registry=registry)
        self.active_connections.set({}, 0)
        # Label dicts are reused per (method, outcome) so the hot path allocates nothing new.
        self._label_cache: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]] = {}

    def observe_call(self, method: str, outcome: str, seconds: float, ctx: Context) -> None:
        """Count one RPC call and record its duration."""
        key = (method, outcome)
        labels = self._label_cache.get(key)
        if labels is None:
            labels = ({"method": method, "outcome": outcome}, {"method": method})
            self._label_cache[key] = labels
        self.rpc_requests.inc(labels[0])
        self.rpc_duration.observe(labels[1], seconds)

    def observe_http(self, route: str, status: int) -> None:
        """Count one HTTP answer."""
        self.http_requests.inc({"route": route, "status": str(status)})


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
        body, headers = render(metrics.registry, request.headers.getall(hdrs.ACCEPT, []))
        return web.Response(body=body, headers=headers)

    return metrics_view
