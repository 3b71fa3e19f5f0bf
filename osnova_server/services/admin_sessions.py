"""The admin page's sign-in: one-time login links and the browser sessions they open.

A link carries a random secret; redeeming it once opens a session, whose random id the browser
keeps in an HttpOnly cookie and whose CSRF token the page sends with every state change. Both
secrets are kept only as SHA-256 digests (they are 256-bit random, so no slow hash is needed), so
a dump of this object or of a shared store holds nothing a browser could present.

`SessionStore` is the interface; `MemorySessionStore` keeps everything in this process, so a
restart signs every browser out and voids every unused link. A cluster keeps them in Redis
instead, behind the same four methods (a link redeemed on one process, a session ended on one,
must be so on all): `redeem_link` must then be one atomic GETDEL, and `get` a plain GET of the
session's key with the session's own expiry as the key's TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

# CONTRACT 7: a session lasts 12 hours from sign-in (not extended by use).
SESSION_LIFETIME: Final = 12 * 3600
DEFAULT_LINK_TTL: Final = 600
MIN_LINK_TTL: Final = 60
MAX_LINK_TTL: Final = 3600
# Past these, issuing one more forgets the oldest: nobody signs in a hundred browsers at once,
# and a script looping over admin.loginLink must not grow the server's memory.
MAX_LINKS: Final = 100
MAX_SESSIONS: Final = 100
SECRET_BYTES: Final = 32


def digest(secret: str) -> str:
    """The key a secret is stored under; the secret itself is never kept."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class LoginLink:
    """A freshly issued link secret and when it stops working (epoch seconds)."""

    secret: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class AdminSession:
    """A signed-in browser: its key (the digest of its cookie), CSRF token and lifetime."""

    key: str
    csrf_token: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """What redeeming a link gives: the session and the cookie value, which only the browser keeps."""

    session: AdminSession
    cookie: str


class SessionStore(Protocol):
    """Where login links and admin sessions live (this process's memory, or a cluster's Redis)."""

    async def issue_link(self, ttl: int) -> LoginLink:
        """A new single-use link secret valid for `ttl` seconds."""

    async def redeem_link(self, secret: str) -> OpenedSession | None:
        """Spend a link and open a session; None if the link is unknown, used or expired."""

    async def get(self, cookie: str) -> AdminSession | None:
        """The live session a cookie names, or None (unknown, ended or expired)."""

    async def end(self, key: str) -> bool:
        """End a session now (log out); False if it had already ended."""


class MemorySessionStore:
    """`SessionStore` in this process's memory; expired entries are dropped as they are met."""

    __slots__ = ("_links", "_sessions", "clock")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # Insertion order is issue order, so the first entry is the oldest.
        self._links: dict[str, float] = {}
        self._sessions: dict[str, AdminSession] = {}
        self.clock = clock

    async def issue_link(self, ttl: int) -> LoginLink:
        """A new single-use link secret valid for `ttl` seconds."""
        if ttl < 1:
            raise ValueError(f"a login link must live at least 1 second, not {ttl}")
        self._prune()
        while len(self._links) >= MAX_LINKS:
            del self._links[next(iter(self._links))]
        secret = secrets.token_urlsafe(SECRET_BYTES)
        expires_at = self.clock() + ttl
        self._links[digest(secret)] = expires_at
        return LoginLink(secret, expires_at)

    async def redeem_link(self, secret: str) -> OpenedSession | None:
        """Spend a link and open a session; None if the link is unknown, used or expired."""
        expires_at = self._links.pop(digest(secret), None)
        now = self.clock()
        if expires_at is None or now >= expires_at:
            return None
        self._prune()
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        cookie = secrets.token_urlsafe(SECRET_BYTES)
        session = AdminSession(digest(cookie), secrets.token_urlsafe(SECRET_BYTES), now, now + SESSION_LIFETIME)
        self._sessions[session.key] = session
        return OpenedSession(session, cookie)

    async def get(self, cookie: str) -> AdminSession | None:
        """The live session a cookie names, or None (unknown, ended or expired)."""
        key = digest(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        if self.clock() >= session.expires_at:
            del self._sessions[key]
            return None
        return session

    async def end(self, key: str) -> bool:
        """End a session now (log out); False if it had already ended."""
        return self._sessions.pop(key, None) is not None

    def _prune(self) -> None:
        """Forget expired links and sessions (cheap: both are bounded by the caps above)."""
        now = self.clock()
        for link, expires_at in list(self._links.items()):
            if now >= expires_at:
                del self._links[link]
        for key, session in list(self._sessions.items()):
            if now >= session.expires_at:
                del self._sessions[key]


__all__ = [
    "DEFAULT_LINK_TTL", "MAX_LINK_TTL", "MIN_LINK_TTL", "SESSION_LIFETIME", "AdminSession",
    "LoginLink", "MemorySessionStore", "OpenedSession", "SessionStore",
]
