"""Long-lived device secrets (refresh tokens): random generation, argon2id hashing, lookup keys.

A refresh token is stored twice, neither time in the clear:

- `hash_lookup_key` (SHA-256 hex) is the indexed column that finds the row. Argon2 hashes are
  salted, so a presented secret cannot be turned into a hash to search for; the SHA-256 of a
  256-bit random value can, and is safe to keep, since nobody can invert it or brute-force 2^256.
- the argon2id hash of the same secret is then checked with `verify_secret`, so that a leaked
  database (or a timing difference in the index lookup) alone never authenticates anyone.

Argon2id parameters are OWASP's first recommendation (m=19 MiB, t=2, p=1): about 20-40 ms per
hash here, paid only at pairing and refresh, never per request. Hashing runs in a small dedicated
thread pool (argon2-cffi releases the GIL), never on the event loop; the pool's size bounds the
memory a flood of refresh attempts can claim (19 MiB per running hash) and keeps the default
executor, which also resolves DNS names, free.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

_LOGGER = logging.getLogger(__name__)

ARGON2_TIME_COST: Final = 2
ARGON2_MEMORY_COST_KIB: Final = 19_456
ARGON2_PARALLELISM: Final = 1
ARGON2_WORKERS: Final = 2
REFRESH_TOKEN_BYTES: Final = 32
TOKEN_ID_BYTES: Final = 16

_HASHER: Final = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)
_EXECUTOR: Final = ThreadPoolExecutor(max_workers=ARGON2_WORKERS, thread_name_prefix="argon2")


def _verify_sync(hash: str, secret: str) -> bool:
    """Check a secret against an argon2 hash; any failure, malformed hashes included, is False."""
    try:
        return _HASHER.verify(hash, secret)
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        # A lone surrogate from a client's JSON cannot be a secret this server issued.
        return False


async def hash_secret(secret: str) -> str:
    """Hash a secret with argon2id off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, _HASHER.hash, secret)


async def verify_secret(hash: str, secret: str) -> bool:
    """Tell, off the event loop, whether `secret` matches the argon2 `hash`."""
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, _verify_sync, hash, secret)


def new_refresh_token() -> str:
    """Return a fresh refresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def new_token_id() -> str:
    """Return a fresh random identifier (128 bits, URL-safe) for token ids and the like."""
    return secrets.token_urlsafe(TOKEN_ID_BYTES)


def hash_lookup_key(secret: str) -> str:
    """Return the SHA-256 hex of a secret, the index used to find its row in the store."""
    # surrogatepass: a lone surrogate in a client's JSON must miss the index, not crash.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
