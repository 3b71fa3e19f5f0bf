"""Tests of device credentials: argon2id off the event loop, random secrets, lookup keys."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from osnova_server.security import credentials
from osnova_server.security.credentials import (
    hash_lookup_key,
    hash_secret,
    new_refresh_token,
    new_token_id,
    verify_secret,
)

URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


async def test_hash_and_verify() -> None:
    """The right secret verifies, a wrong one does not, and the hash is argon2id at OWASP cost."""
    secret = new_refresh_token()
    hashed = await hash_secret(secret)
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert secret not in hashed
    assert await verify_secret(hashed, secret) is True
    assert await verify_secret(hashed, secret + "x") is False
    assert await verify_secret(hashed, "") is False


async def test_hashes_are_salted() -> None:
    """The same secret hashes differently each time, which is why lookup needs another key."""
    first, second = await asyncio.gather(hash_secret("same"), hash_secret("same"))
    assert first != second
    assert await verify_secret(first, "same")
    assert await verify_secret(second, "same")


@pytest.mark.parametrize(
    "stored", ["", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$broken", "$2b$12$bcrypthash"]
)
async def test_invalid_hash_is_false(stored: str) -> None:
    """A corrupt stored hash fails closed instead of raising."""
    assert await verify_secret(stored, "secret") is False


async def test_lone_surrogate_secret_is_false() -> None:
    """A client's JSON may hold a lone surrogate; it simply does not match."""
    hashed = await hash_secret("secret")
    assert await verify_secret(hashed, "\ud800") is False


async def test_hashing_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a hash is computed, the event loop keeps running other tasks."""
    started = threading.Event()
    release = threading.Event()
    threads: list[int] = []

    class BlockingHasher:
        """Blocks until the event loop releases it, which it can only do if it is free."""

        def hash(self, secret: str) -> str:
            threads.append(threading.get_ident())
            started.set()
            assert release.wait(timeout=10), "the event loop was blocked"
            return "hashed"

        def verify(self, hashed: str, secret: str) -> bool:
            threads.append(threading.get_ident())
            return True

    monkeypatch.setattr(credentials, "_HASHER", BlockingHasher())
    hashing = asyncio.create_task(hash_secret("s"))
    assert await asyncio.to_thread(started.wait, 10)
    release.set()  # runs on the loop while the hash is still in progress
    assert await hashing == "hashed"
    assert await verify_secret("hashed", "s") is True
    assert threading.get_ident() not in threads
    assert len(threads) == 2


def test_new_refresh_token() -> None:
    """Refresh tokens are 256 random bits, URL-safe, never repeated."""
    issued = {new_refresh_token() for _ in range(1000)}
    assert len(issued) == 1000
    for token in issued:
        assert len(token) == 43
        assert URLSAFE.match(token)


def test_new_token_id() -> None:
    """Token ids are 128 random bits, URL-safe."""
    issued = {new_token_id() for _ in range(1000)}
    assert len(issued) == 1000
    assert all(len(token) == 22 and URLSAFE.match(token) for token in issued)


def test_hash_lookup_key() -> None:
    """The lookup key is the SHA-256 hex of the secret: deterministic, and safe on odd input."""
    assert hash_lookup_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    token = new_refresh_token()
    assert hash_lookup_key(token) == hash_lookup_key(token)
    assert hash_lookup_key(token) != hash_lookup_key(token + "x")
    assert len(hash_lookup_key("\ud800")) == 64
