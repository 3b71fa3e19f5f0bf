"""The server identity: an Ed25519 key made at first start, kept 0600, reported by identity.status."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Final

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from osnova_server.client import OsnovaClient
from osnova_server.server import StartupError
from osnova_server.services.identity import (
    KEY_NAME,
    RECORD_NAME,
    IdentityError,
    fingerprint_of,
    load_or_create_identity,
)
from tests.conftest import RunningServer, make_config, running_server
from tests.test_pairing import pair_device

RFC3339_UTC: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PKCS8_NONE: Final = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def raw_public_fingerprint(key_path: Path) -> str:
    """The fingerprint computed independently from the key file on disk."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    return "sha256:" + hashlib.sha256(raw).hexdigest()


async def test_identity_status_reports_the_key_made_at_first_start(osnova: RunningServer, state_dir: Path) -> None:
    key_path = state_dir / KEY_NAME
    device_token = (await pair_device(osnova))["access_token"]
    async with OsnovaClient(osnova.url, device_token) as client:
        status = await client.call("identity.status")
    assert set(status) == {"initialized", "fingerprint", "created_at"}
    assert status["initialized"] is True
    assert status["fingerprint"] == raw_public_fingerprint(key_path)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", status["fingerprint"])
    assert RFC3339_UTC.match(status["created_at"])
    assert osnova.runtime.identity.fingerprint == status["fingerprint"]
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


async def test_identity_is_kept_across_restarts(state_dir: Path) -> None:
    config = make_config(state_dir)
    async with running_server(config) as first, first.client(admin=True) as client:
        before = await client.call("identity.status")
    key_bytes = (state_dir / KEY_NAME).read_bytes()
    async with running_server(config) as second, second.client(admin=True) as client:
        assert await client.call("identity.status") == before
    assert (state_dir / KEY_NAME).read_bytes() == key_bytes


def test_created_at_survives_a_lost_record_via_the_key_mtime(state_dir: Path) -> None:
    first = load_or_create_identity(state_dir)
    (state_dir / RECORD_NAME).unlink()
    os.utime(state_dir / KEY_NAME, (1_700_000_000, 1_700_000_000))
    again = load_or_create_identity(state_dir)
    assert again.fingerprint == first.fingerprint
    assert again.created_at == "2023-11-14T22:13:20Z"
    assert json.loads((state_dir / RECORD_NAME).read_text())["created_at"] == "2023-11-14T22:13:20Z"


def test_a_key_swapped_in_by_hand_gets_its_own_created_at(state_dir: Path) -> None:
    first = load_or_create_identity(state_dir)
    replacement = Ed25519PrivateKey.generate()
    (state_dir / KEY_NAME).write_bytes(replacement.private_bytes(*PKCS8_NONE))
    os.utime(state_dir / KEY_NAME, (1_800_000_000, 1_800_000_000))
    swapped = load_or_create_identity(state_dir)
    assert swapped.fingerprint == fingerprint_of(replacement) != first.fingerprint
    assert swapped.created_at == "2027-01-15T08:00:00Z"


def test_a_widened_key_mode_is_narrowed(state_dir: Path) -> None:
    load_or_create_identity(state_dir)
    os.chmod(state_dir / KEY_NAME, 0o644)
    load_or_create_identity(state_dir)
    assert stat.S_IMODE((state_dir / KEY_NAME).stat().st_mode) == 0o600


def test_no_temporary_files_are_left(state_dir: Path) -> None:
    load_or_create_identity(state_dir)
    assert sorted(p.name for p in state_dir.iterdir()) == sorted([KEY_NAME, RECORD_NAME])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"garbage", "is not an unencrypted Ed25519 PEM key", id="garbage"),
        pytest.param(b"", "is not an unencrypted Ed25519 PEM key", id="empty"),
        pytest.param(
            generate_private_key(SECP256R1()).private_bytes(*PKCS8_NONE),
            "is not an unencrypted Ed25519 PEM key", id="ec-key",
        ),
        pytest.param(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            ),
            "is not an unencrypted Ed25519 PEM key", id="encrypted",
        ),
    ],
)
async def test_an_unusable_key_stops_startup_with_one_clear_line(
    state_dir: Path, content: bytes, fragment: str
) -> None:
    key_path = state_dir / KEY_NAME
    key_path.write_bytes(content)
    with pytest.raises(IdentityError, match=fragment):
        load_or_create_identity(state_dir)
    with pytest.raises(StartupError) as stopped:
        async with running_server(make_config(state_dir)):
            pass
    message = str(stopped.value)
    assert str(key_path) in message and fragment in message and "\n" not in message
    assert key_path.read_bytes() == content  # never replaced: paired devices pin it
