"""events.subscribe and events.unsubscribe: choose which events a WebSocket is pushed."""

from __future__ import annotations

from osnova_server.errors import InvalidParams, InvalidRequest
from osnova_server.events import TOPICS
from osnova_server.rpc.context import Context, Subscriber
from osnova_server.rpc.methods import REGISTRY as rpc
from osnova_server.security.roles import Role


def _checked(ctx: Context, topics: list[str]) -> Subscriber:
    """The calling connection, once every topic is known; else -32602 naming the unknown ones."""
    unknown = sorted(set(topics) - TOPICS)
    if unknown:
        raise InvalidParams(
            f"Invalid params: unknown topics in 'topics': {', '.join(unknown)}; "
            f"known topics are: {', '.join(sorted(TOPICS))}"
        )
    if ctx.connection is None:
        raise InvalidRequest("Invalid Request: events are delivered on the WebSocket /ws only")
    return ctx.connection


@rpc.method("events.subscribe", role=Role.MEMBER, errors=(InvalidParams,), websocket_only=True)
async def events_subscribe(ctx: Context, topics: list[str]) -> bool:
    """Push events of these topics to this WebSocket as `event` notifications."""
    _checked(ctx, topics).subscribe(topics)
    return True


@rpc.method("events.unsubscribe", role=Role.MEMBER, errors=(InvalidParams,), websocket_only=True)
async def events_unsubscribe(ctx: Context, topics: list[str]) -> bool:
    """Stop pushing events of these topics to this WebSocket."""
    _checked(ctx, topics).unsubscribe(topics)
    return True
