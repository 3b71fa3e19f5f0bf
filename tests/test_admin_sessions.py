"""The admin page's login links and sessions, in memory, with a clock the tests move."""

from __future__ import annotations

import pytest

from osnova_server.services.admin_sessions import (
    MAX_LINKS,
    MAX_SESSIONS,
    SESSION_LIFETIME,
    MemorySessionStore,
    digest,
)
from tests.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def store(clock: FakeClock) -> MemorySessionStore:
    return MemorySessionStore(clock)


async def test_a_link_opens_one_session_of_twelve_hours(store: MemorySessionStore, clock: FakeClock) -> None:
    link = await store.issue_link(600)
    assert link.expires_at == clock.now + 600
    opened = await store.redeem_link(link.secret)
    assert opened is not None
    assert opened.session.expires_at == clock.now + SESSION_LIFETIME == clock.now + 12 * 3600
    assert await store.get(opened.cookie) == opened.session
    assert opened.session.key == digest(opened.cookie) != opened.cookie
    assert len(opened.session.csrf_token) >= 43


async def test_a_link_works_once(store: MemorySessionStore) -> None:
    link = await store.issue_link(600)
    assert await store.redeem_link(link.secret) is not None
    assert await store.redeem_link(link.secret) is None


async def test_an_expired_link_is_refused(store: MemorySessionStore, clock: FakeClock) -> None:
    link = await store.issue_link(60)
    clock.advance(60)
    assert await store.redeem_link(link.secret) is None


@pytest.mark.parametrize("secret", ["", "x", "A" * 43, "\ud800"])
async def test_unknown_secrets_are_refused(store: MemorySessionStore, secret: str) -> None:
    await store.issue_link(600)
    assert await store.redeem_link(secret) is None


async def test_a_session_expires_after_twelve_hours(store: MemorySessionStore, clock: FakeClock) -> None:
    opened = await store.redeem_link((await store.issue_link(600)).secret)
    assert opened is not None
    clock.advance(SESSION_LIFETIME - 1)
    assert await store.get(opened.cookie) is not None
    clock.advance(1)
    assert await store.get(opened.cookie) is None


async def test_an_ended_session_is_gone(store: MemorySessionStore) -> None:
    opened = await store.redeem_link((await store.issue_link(600)).secret)
    assert opened is not None
    assert await store.end(opened.session.key) is True
    assert await store.get(opened.cookie) is None
    assert await store.end(opened.session.key) is False


async def test_only_digests_are_kept(store: MemorySessionStore) -> None:
    link = await store.issue_link(600)
    opened = await store.redeem_link((await store.issue_link(600)).secret)
    assert opened is not None
    kept = repr(vars(store) if hasattr(store, "__dict__") else [getattr(store, n) for n in store.__slots__])
    for secret in (link.secret, opened.cookie):
        assert secret not in kept


async def test_links_and_sessions_are_bounded(store: MemorySessionStore) -> None:
    first = await store.issue_link(600)
    for _ in range(MAX_LINKS):
        await store.issue_link(600)
    assert await store.redeem_link(first.secret) is None  # the oldest was forgotten
    cookies = []
    for _ in range(MAX_SESSIONS + 1):
        opened = await store.redeem_link((await store.issue_link(600)).secret)
        assert opened is not None
        cookies.append(opened.cookie)
    assert await store.get(cookies[0]) is None
    assert await store.get(cookies[-1]) is not None


async def test_a_link_needs_a_positive_lifetime(store: MemorySessionStore) -> None:
    with pytest.raises(ValueError):
        await store.issue_link(0)
