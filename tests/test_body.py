"""Request bodies: no content encodings (415, nothing inflated), whole within body_timeout (web/body.py)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import struct
import time
import zlib
from functools import cache
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from osnova_server import config as config_module
from osnova_server.web.body import unsupported_encoding
from tests.conftest import RunningServer, ServerProcess, free_port, make_config, write_config

MIB: Final = 1 << 20
CALL: Final = json.dumps({"jsonrpc": "2.0", "method": "config.setServer",
                          "params": {"address": "http://evil.example"}, "id": 1}).encode()


@cache
def gzip_bomb() -> bytes:
    """A valid 1 MiB gzip stream that inflates to 1 GiB of zeros.

    Built from one compressed MiB, full-flushed so the segment can be repeated as it is, and the
    gzip trailer's CRC-32 and size of the whole: far cheaper than compressing a GiB.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush()
    crc, zeros = 0, bytes(MIB)
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
    return header + segment * 1024 + final + struct.pack("<II", crc, 1 << 30)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST /rpc over a plain socket (aiohttp's client would compress or refuse); status and JSON."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n{lines}\r\n".encode())
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read; the answer is waiting
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return int(head.split()[1]), json.loads(rest[:length])


def test_a_gzip_bomb_is_refused_415_and_nothing_inflates(tmp_path: Path, server_process: Any) -> None:
    port = free_port()
    config = make_config(tmp_path / "state", logging={"level": "info", "format": "text"})
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}")
    process: ServerProcess = server_process(write_config(tmp_path / "server.toml", config))
    process.wait_ready(f"http://127.0.0.1:{port}")
    bomb = gzip_bomb()
    assert len(bomb) < 1.1 * MIB
    pid = process.process.pid
    before = _cpu_seconds(pid)
    for _ in range(3):
        status, answer = _post(port, bomb, {"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert status == 415
        assert answer == {"error": "request bodies must not be compressed (Content-Encoding: gzip); send plain JSON"}
    # Inflating one GiB takes seconds of CPU; reading three MiB of it takes milliseconds.
    assert _cpu_seconds(pid) - before < 1.0
    code, stderr = process.stop()
    assert code == 0
    assert "Traceback" not in stderr


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "deflate", "br", "zstd", "identity, gzip", "x-custom"])
async def test_an_encoded_body_is_415_and_runs_nothing(osnova: RunningServer, encoding: str) -> None:
    import asyncio

    token = osnova.admin_token()
    headers = {"Content-Encoding": encoding, "Authorization": f"Bearer {token}"}
    status, answer = await asyncio.to_thread(_post, osnova.server.port, gzip.compress(CALL), headers)
    assert status == 415
    assert answer == {"error": f"request bodies must not be compressed (Content-Encoding: {encoding}); send plain JSON"}
    assert await osnova.runtime.settings.get_server() is None


@pytest.mark.parametrize("encoding", ["identity", "Identity", " identity "])
async def test_an_identity_body_is_served(osnova: RunningServer, http: aiohttp.ClientSession, encoding: str) -> None:
    headers = {"Content-Encoding": encoding, "Authorization": f"Bearer {osnova.admin_token()}"}
    async with http.post(f"{osnova.url}/rpc", data=CALL, headers=headers) as answer:
        assert answer.status == 200
        assert (await answer.json())["result"] is True
    assert await osnova.runtime.settings.get_server() == "http://evil.example"


async def test_a_bodiless_request_with_a_content_encoding_header_is_served(
    osnova: RunningServer, http: aiohttp.ClientSession,
) -> None:
    async with http.get(f"{osnova.url}/health", headers={"Content-Encoding": "gzip"}) as answer:
        assert answer.status == 200


async def test_a_body_over_the_limit_is_still_413(state_dir: Path, http: aiohttp.ClientSession) -> None:
    from tests.conftest import running_server

    async with running_server(make_config(state_dir, limits={"max_body_bytes": 1000})) as server:
        async with http.post(f"{server.url}/rpc", data=b" " * 5000) as answer:
            assert answer.status == 413
        started = time.monotonic()
        async with http.get(f"{server.url}/health") as answer:
            assert answer.status == 200
        assert time.monotonic() - started < 10


@pytest.mark.parametrize(("value", "refused"), [
    ("gzip", True), ("identity", False), ("", False), ("identity,identity", False), ("identity, br", True),
])
def test_unsupported_encoding(value: str, refused: bool) -> None:
    assert unsupported_encoding(value) is refused
