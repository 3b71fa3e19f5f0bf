"""Events and revocations cross instances through Redis pub/sub."""

from __future__ import annotations

from pathlib import Path

from osnova_server.events import CONFIG_CHANGED, Event
from tests.cluster import call, socket, two_servers, wait_for


async def test_an_event_published_on_a_reaches_a_subscriber_on_b(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url) as (a, b), socket(b, b.admin_token()) as ws:
        subscribe = {"jsonrpc": "2.0", "method": "events.subscribe", "params": {"topics": [CONFIG_CHANGED]}, "id": 1}
        await ws.send_json(subscribe)
        assert (await ws.receive_json(timeout=10))["result"] is True
        assert await call(a, "config.setServer", {"address": "https://home.example:8443"}) is True
        event = await ws.receive_json(timeout=10)
    assert event["method"] == "event"
    assert event["params"]["topic"] == CONFIG_CHANGED
    assert event["params"]["data"]["value"] == "https://home.example:8443"


async def test_an_event_is_delivered_once_on_the_instance_that_published_it(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url) as (a, b):
        seen_a: list[Event] = []
        seen_b: list[Event] = []
        a.runtime.events.listen(seen_a.append)
        b.runtime.events.listen(seen_b.append)
        a.runtime.events.publish(CONFIG_CHANGED, {"key": "k", "value": "v"})
        await wait_for(lambda: seen_b, what="the event reaching B")
        await call(a, "status.get")  # a round trip, time for a duplicate to show up on A
    assert seen_a == [Event(CONFIG_CHANGED, {"key": "k", "value": "v"})]
    assert seen_b == seen_a
