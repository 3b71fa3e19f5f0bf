"""GET /metrics: the Prometheus text of this server's collectors, for `[metrics] allow_from` only."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web
from aioprometheus.renderer import render

from osnova_server.metrics import Household, Metrics
from osnova_server.web.errors import json_error
from osnova_server.web.keys import REMOTE_KEY, STATE_KEY

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime

UNMATCHED_ROUTE: Final = "(unmatched)"


def route_label(request: web.BaseRequest) -> str:
    """The matched route template, never the raw path (which a client controls)."""
    info = getattr(request, "match_info", None)
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return canonical if isinstance(canonical, str) and canonical else UNMATCHED_ROUTE


def household(runtime: Runtime) -> Household:
    """Count what the runtime keeps in memory now (no database query)."""
    devices = Counter((str(device.role), device.revoked) for device in runtime.store.devices())
    return Household(
        devices=devices,
        apps=len(runtime.apps.installed()),
        auth_failures=runtime.auth_failures,
        bans_imposed=runtime.bans.imposed,
        banned_addresses=len(runtime.bans.active()),
        breaker_transitions=runtime.apps.breakers.transitions,
        spans_dropped=runtime.tracing.dropped if runtime.tracing is not None else {},
    )


def setup_metrics(app: web.Application, metrics: Metrics, allow_from: Sequence[str]) -> None:
    """Add GET /metrics, refusing addresses outside `allow_from` with 403."""
    networks = [ipaddress.ip_network(network, strict=False) for network in allow_from]

    async def metrics_view(request: web.Request) -> web.Response:
        try:
            address = ipaddress.ip_address(request[REMOTE_KEY])
        except ValueError:
            address = None
        if address is None or not any(address in network for network in networks):
            return json_error(403, "metrics are served only to [metrics] allow_from addresses")
        metrics.publish(household(request.app[STATE_KEY].runtime))
        body, headers = render(metrics.registry, request.headers.getall(hdrs.ACCEPT, []))
        return web.Response(body=body, headers=headers)

    app.router.add_get("/metrics", metrics_view)

    async def count_http(request: web.Request, response: web.StreamResponse) -> None:
        metrics.observe_http(route_label(request), response.status)

    app.on_response_prepare.append(count_http)
