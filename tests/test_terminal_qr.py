"""The terminal QR code of `pair`: decoded by a real decoder (zbarimg), at most 24 lines, a 4-module quiet zone."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from osnova_server.cli.terminal_qr import QUIET_ZONE, draw, half_block_lines, qr_matrix, sextant, sextant_lines
from osnova_server.client import OsnovaClient
from tests.conftest import ServerProcess, cli, free_port, make_config, write_config

PIL = pytest.importorskip("PIL.Image")
NEEDS_ZBAR = pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbarimg (Debian package zbar-tools) not installed")
SGR: Final = re.compile(r"\x1b\[[0-9;]*m")
HALF_BLOCKS: Final = {" ": (False, False), "▀": (True, False), "▄": (False, True), "█": (True, True)}
SEXTANT_BITS: Final = {sextant(bits): bits for bits in range(64)}
PIXELS_PER_MODULE: Final = 6


def is_qr_line(line: str) -> bool:
    """A line drawn with block characters only (and at least one dark one)."""
    text = SGR.sub("", line)
    return bool(text.strip()) and all(c in SEXTANT_BITS or c in HALF_BLOCKS for c in text)


def modules(lines: list[str]) -> list[list[bool]]:
    """The module matrix the printed characters show (sextants if any appear, else half blocks)."""
    lines = [SGR.sub("", line) for line in lines]
    if all(c in HALF_BLOCKS for line in lines for c in line):
        rows: list[list[bool]] = []
        for line in lines:
            rows.append([HALF_BLOCKS[c][0] for c in line])
            rows.append([HALF_BLOCKS[c][1] for c in line])
        return rows
    rows = []
    for line in lines:
        bits = [SEXTANT_BITS[c] for c in line]
        for dy in range(3):
            rows.append([bool(b & (1 << (2 * dy + dx))) for b in bits for dx in range(2)])
    return rows


def decode(lines: list[str], tmp_path: Path) -> str:
    """Draw the characters back as a PNG (dark modules black) and read it with zbarimg."""
    matrix = modules(lines)
    image = PIL.new("L", (len(matrix[0]) * PIXELS_PER_MODULE, len(matrix) * PIXELS_PER_MODULE), 255)
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                image.paste(0, (x * PIXELS_PER_MODULE, y * PIXELS_PER_MODULE,
                                (x + 1) * PIXELS_PER_MODULE, (y + 1) * PIXELS_PER_MODULE))
    path = tmp_path / "qr.png"
    image.save(path)
    result = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.removesuffix("\n")


def test_sextants_are_the_unicode_block_in_order() -> None:
    """64 distinct characters: space, the 60 of U+1FB00..U+1FB3B, the two half columns and the full block."""
    assert len(SEXTANT_BITS) == 64
    assert (sextant(0), sextant(1), sextant(20), sextant(22), sextant(62), sextant(63)) == (
        " ", "\U0001fb00", "\U0001fb13", "\U0001fb14", "\U0001fb3b", "█",
    )
    assert (sextant(1 | 4 | 16), sextant(2 | 8 | 32)) == ("▌", "▐")
    assert {ord(c) for c in SEXTANT_BITS} - {0x20, 0x2588, 0x258C, 0x2590} == set(range(0x1FB00, 0x1FB3C))


@pytest.mark.parametrize("draw_lines", [half_block_lines, sextant_lines])
def test_quiet_zone_is_four_modules(draw_lines: Any) -> None:
    """Both drawings keep the standard's 4 light modules around the code, and no more than padding."""
    matrix = qr_matrix("x" * 200)
    shown = modules(draw_lines(matrix))
    size = len(matrix)
    assert all(not any(row) for row in shown[:QUIET_ZONE])
    assert all(not any(row[:QUIET_ZONE]) for row in shown)
    assert shown[QUIET_ZONE][QUIET_ZONE] and shown[QUIET_ZONE][size - QUIET_ZONE - 1]  # the finder patterns' corners
    assert all(not any(row[size - QUIET_ZONE:]) for row in shown)
    assert all(not any(row) for row in shown[size - QUIET_ZONE:])
    assert [row[:size] for row in shown[:size]] == matrix  # the drawing is the matrix, module for module


@NEEDS_ZBAR
@pytest.mark.parametrize(("max_lines", "drawn_as"), [(24, "sextants"), (60, "half blocks")])
def test_a_payload_sized_code_decodes(max_lines: int, drawn_as: str, tmp_path: Path) -> None:
    """~240 bytes, as a pairing payload: 22 lines of sextants, or half blocks where the terminal is tall."""
    data = json.dumps({"server": {"address": "https://192.168.100.200:8443", "fingerprint": "sha256:" + "ab" * 32},
                       "pairing": {"code": "ABCD-1234", "nonce": "n" * 22, "expiresAt": "2026-11-26T10:00:00Z"}})
    lines = draw(data, max_lines, color=False)
    assert len(lines) <= max_lines
    assert any(ord(c) >= 0x1FB00 for line in lines for c in line) == (drawn_as == "sextants")
    assert decode(lines, tmp_path) == data


def _pair_config(tmp_path: Path) -> tuple[Path, str]:
    """A server config on a free port, and its URL."""
    port = free_port()
    state = tmp_path / "state"
    config = make_config(state, server={"bind_address": f"127.0.0.1:{port}", "state_dir": str(state)})
    return write_config(tmp_path / "server.toml", config), f"http://127.0.0.1:{port}"


def _redeem(url: str, code: str) -> dict[str, Any]:
    """Pair with the code read from the QR."""
    import asyncio

    async def complete() -> dict[str, Any]:
        async with OsnovaClient(url) as anonymous:
            return await anonymous.call("pairing.complete", {"token": code})  # type: ignore[no-any-return]

    return asyncio.run(complete())


@NEEDS_ZBAR
def test_pair_prints_a_qr_that_decodes_to_the_payload(tmp_path: Path, server_process: Any) -> None:
    """`pair` on a 24-line terminal: a QR of at most 24 lines whose text is the payload; its code pairs."""
    path, url = _pair_config(tmp_path)
    process: ServerProcess = server_process(path)
    process.wait_ready(url)
    result = cli("--config", str(path), "pair", env={"LINES": "24", "COLUMNS": "80", "OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    qr_lines = [line for line in lines if is_qr_line(line)]
    assert 0 < len(qr_lines) <= 24
    assert not SGR.search(result.stdout)  # not a terminal: plain characters
    payload = json.loads(decode(qr_lines, tmp_path))
    assert set(payload) == {"server", "pairing"}
    assert f"pairing code  {payload['pairing']['code']}" in lines
    assert f"fingerprint   {payload['server']['fingerprint']}" in lines
    assert payload["server"]["address"] == url
    assert _redeem(url, payload["pairing"]["code"])["token_type"] == "Bearer"


@NEEDS_ZBAR
def test_on_a_terminal_the_qr_sets_its_own_colours(tmp_path: Path, server_process: Any) -> None:
    """Under a pseudo-terminal every QR line sets black on white and resets, so dark themes draw it right."""
    path, url = _pair_config(tmp_path)
    process: ServerProcess = server_process(path)
    process.wait_ready(url)
    leader, follower = pty.openpty()
    env = {**os.environ, "LINES": "24", "COLUMNS": "80", "TERM": "xterm-256color", "OSNOVA_JWT_SECRET": ""}
    child = subprocess.Popen([sys.executable, "-m", "osnova_server", "--config", str(path), "pair"],
                             stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert child.wait(timeout=30) == 0
    lines = b"".join(chunks).decode().replace("\r\n", "\n").splitlines()
    qr_lines = [line for line in lines if is_qr_line(line)]
    assert 0 < len(qr_lines) <= 24
    assert all(line.startswith("\x1b[38;5;16;48;5;231m") and line.endswith("\x1b[0m") for line in qr_lines)
    payload = json.loads(decode(qr_lines, tmp_path))
    assert payload["server"]["address"] == url
