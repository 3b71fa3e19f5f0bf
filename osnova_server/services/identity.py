"""The server's own identity: an Ed25519 key made at first start, which paired devices pin.

The key lives in `state_dir/identity.pem` (PEM PKCS#8, mode 0600). Its creation time lives
beside it in `identity.json`, together with the fingerprint it was written for, so the record
travels with the key when `state_dir` is backed up or moved, and a key swapped in by hand is
noticed (its creation time then falls back to the key file's modification time). Nothing here
ever logs or returns key material: only the public key's fingerprint leaves this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from osnova_server.files import create_file, replace_file
from osnova_server.store import StoreError
from osnova_server.timestamps import rfc3339

_LOGGER = logging.getLogger(__name__)

KEY_NAME: Final = "identity.pem"
RECORD_NAME: Final = "identity.json"
KEY_MODE: Final = 0o600
_RAW: Final = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class IdentityError(StoreError):
    """The identity key in `state_dir` cannot be used; like a broken database, it stops startup."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What the server tells the world about its key: the fingerprint and when it was made."""

    fingerprint: str
    created_at: str
    key_path: Path

    def status(self) -> dict[str, Any]:
        """The `identity.status` shape of CONTRACT 4."""
        return {"initialized": True, "fingerprint": self.fingerprint, "created_at": self.created_at}


def fingerprint_of(key: Ed25519PrivateKey) -> str:
    """`sha256:` and the hex SHA-256 of the raw 32-byte public key."""
    return "sha256:" + hashlib.sha256(key.public_key().public_bytes(*_RAW)).hexdigest()


def load_or_create_identity(state_dir: Path) -> Identity:
    """Load the identity in `state_dir`, creating it on first start (blocking: run in a thread)."""
    key_path = state_dir / KEY_NAME
    try:
        key = _load_key(key_path)
    except FileNotFoundError:
        key = _create_key(key_path)
    fingerprint = fingerprint_of(key)
    created_at = _created_at(state_dir / RECORD_NAME, key_path, fingerprint)
    return Identity(fingerprint=fingerprint, created_at=created_at, key_path=key_path)


def _load_key(key_path: Path) -> Ed25519PrivateKey:
    """Read the Ed25519 key (FileNotFoundError when there is none yet), keeping its mode 0600."""
    try:
        data = _read_private(key_path)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise IdentityError(
            f"identity key {key_path} cannot be read ({err.strerror}); make it readable by the "
            "server's user only (mode 0600)"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(
            f"identity key {key_path} is not an unencrypted Ed25519 PEM key; restore it from a "
            "backup, or move it away to have a new identity made (paired devices must then pair again)"
        )
    return key


def _read_private(key_path: Path) -> bytes:
    """Return the key file's bytes, narrowing its mode to 0600 if someone widened it."""
    fd = os.open(key_path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stream:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            _LOGGER.warning("identity key %s has mode %04o; narrowing it to 0600", key_path, mode)
            try:
                os.fchmod(fd, KEY_MODE)
            except OSError as err:
                _LOGGER.warning("cannot narrow the mode of %s: %s", key_path, err.strerror)
        return stream.read()


def _create_key(key_path: Path) -> Ed25519PrivateKey:
    """Make a new key and write it atomically, never replacing a key another process just made."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        try:
            create_file(key_path, pem, KEY_MODE)
        except FileExistsError:  # a concurrent first start made one; keep that key
            return _load_key(key_path)
    except OSError as err:
        raise IdentityError(
            f"cannot create identity key {key_path} ({err.strerror}); check that the state "
            "directory is writable by the server's user"
        ) from None
    _LOGGER.info("created a new server identity in %s (%s)", key_path, fingerprint_of(key))
    return key


def _created_at(record_path: Path, key_path: Path, fingerprint: str) -> str:
    """The key's creation time from its record, rewriting the record if it is missing or stale."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("fingerprint") == fingerprint and isinstance(record.get("created_at"), str):
            return str(record["created_at"])
    except (OSError, ValueError, AttributeError):
        pass
    created_at = rfc3339(datetime.fromtimestamp(key_path.stat().st_mtime, UTC))
    body = json.dumps({"fingerprint": fingerprint, "created_at": created_at}, indent=2) + "\n"
    try:
        replace_file(record_path, body.encode("utf-8"), KEY_MODE)
    except OSError as err:
        # The record is a convenience; the key is what matters, so serve on without it.
        _LOGGER.warning("cannot write identity record %s: %s", record_path, err.strerror)
    return created_at
