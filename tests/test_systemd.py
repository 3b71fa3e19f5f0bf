"""Tests for osnova_server.systemd and the shipped unit file, over real AF_UNIX sockets."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Final

import pytest

from osnova_server import systemd
from tests.conftest import free_port, make_config, write_config
from tests.netns import Machine, NamespaceUnavailable, run_in, two_machines

UNIT: Final = Path(__file__).resolve().parent.parent / "osnova_server" / "units" / "osnova-server.service"
MAX_EXPOSURE: Final = 1.5
SYSTEM_UNITS: Final = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
PR_SET_MDWE: Final = 65
NEEDS_ANALYZE = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """Bind a datagram socket in tmp_path and point $NOTIFY_SOCKET at it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


# notify


def test_notify_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd nothing is sent and the caller learns it."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    assert systemd.notify(systemd.READY) is False


@pytest.mark.parametrize(
    "message",
    [systemd.READY, systemd.STOPPING, systemd.WATCHDOG, systemd.RELOADING, "STATUS=up\nREADY=1"],
)
def test_notify_sends_one_datagram_to_path_socket(
    receiver: socket.socket, message: str
) -> None:
    """The message arrives whole, as one datagram, on the socket the path names."""
    assert systemd.notify(message) is True

    assert receiver.recv(4096) == message.encode()


def test_notify_reaches_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leading '@' names a socket in the abstract namespace."""
    name = f"osnova-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        assert systemd.notify(systemd.READY) is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_notify_ignores_unusable_addresses(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """An empty or unsupported $NOTIFY_SOCKET means no systemd to talk to."""
    monkeypatch.setenv("NOTIFY_SOCKET", value)

    assert systemd.notify(systemd.READY) is False


def test_notify_failure_returns_false_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket that is gone is reported as False and a debug line, never an exception."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    caplog.set_level("DEBUG", logger="osnova_server.systemd")

    assert systemd.notify(systemd.WATCHDOG) is False
    assert "WATCHDOG=1" in caplog.text


def test_notify_never_blocks_when_systemd_stops_reading(receiver: socket.socket) -> None:
    """With the receiver's queue full, notify returns False instead of stalling the loop."""
    results: list[bool] = []

    def flood() -> None:
        for _ in range(100_000):
            results.append(systemd.notify(systemd.WATCHDOG))
            if not results[-1]:
                return

    worker = threading.Thread(target=flood, daemon=True)
    worker.start()
    worker.join(timeout=10)

    assert not worker.is_alive(), "notify blocked on a full socket queue"
    assert results[0] is True
    assert results[-1] is False


# watchdog_interval


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1000", None, 0.0005),
        ("30000000", "1", None),
        ("30000000", "not-a-pid", None),
        (None, None, None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    """Half of $WATCHDOG_USEC, only when $WATCHDOG_PID is unset or names this process."""
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)

    assert systemd.watchdog_interval() == expected


# the unit file


def unit_settings() -> dict[str, list[str]]:
    """Return every Key=value of the unit, values in order of appearance."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("ExecStart", "/usr/bin/osnova-server --config /etc/osnova/server.toml serve"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("StateDirectory", "osnova"),
        ("StateDirectoryMode", "0700"),
        ("ConfigurationDirectory", "osnova"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
        ("PrivateUsers", "yes"),
    ],
)
def test_unit_declares(key: str, value: str) -> None:
    """The unit keeps the settings the daemon and its users rely on."""
    assert unit_settings().get(key) == [value]


def test_unit_does_not_filter_lan_addresses() -> None:
    """Phones pair over the LAN, so no IP address filtering may be configured."""
    settings = unit_settings()
    assert "IPAddressDeny" not in settings
    assert "PrivateNetwork" not in settings


@NEEDS_ANALYZE
def test_unit_exposure_is_low() -> None:
    """`systemd-analyze security` rates the sandbox at most 1.5 (OK)."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)

    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


def verify_in_root(root: Path, unit_text: str) -> str:
    """Return what `systemd-analyze verify` prints for the unit installed in a scratch root.

    The root holds the stock system units and stub executables, so verify checks the unit's
    syntax and dependencies without needing osnova-server installed on this machine.
    """
    assert SYSTEM_UNITS is not None
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for line in unit_text.splitlines():
        if line.startswith("Exec") and "=" in line:
            program = root / line.split("=", 1)[1].split()[0].lstrip("-@:+!").lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout + result.stderr


@NEEDS_ANALYZE
@pytest.mark.skipif(SYSTEM_UNITS is None, reason="no system unit directory to verify against")
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` has nothing to say about the unit."""
    assert verify_in_root(tmp_path, UNIT.read_text()) == ""


@NEEDS_ANALYZE
@pytest.mark.skipif(SYSTEM_UNITS is None, reason="no system unit directory to verify against")
def test_verify_harness_reports_mistakes(tmp_path: Path) -> None:
    """The scratch-root verify still reports a broken setting, so a clean run means something."""
    broken = UNIT.read_text().replace("[Service]\n", "[Service]\nNoSuchSetting=yes\n")

    assert "Unknown key 'NoSuchSetting'" in verify_in_root(tmp_path, broken)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_MDWE is Linux-only")
def test_dependencies_load_with_memory_deny_write_execute() -> None:
    """The unit's MemoryDenyWriteExecute=yes does not break argon2 (cffi), cryptography or zeroconf (ctypes)."""
    pytest.importorskip("argon2")
    probe = f"import ctypes; raise SystemExit(ctypes.CDLL(None).prctl({PR_SET_MDWE}, 1, 0, 0, 0))"
    if subprocess.run([sys.executable, "-c", probe], check=False).returncode != 0:
        pytest.skip("kernel without PR_SET_MDWE (Linux 6.3+)")
    script = f"""
import ctypes, mmap, ssl
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl({PR_SET_MDWE}, 1, 0, 0, 0) == 0, ctypes.get_errno()
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    raise SystemExit("W^X is not enforced; the test proves nothing")
import argon2, cryptography.hazmat.bindings._rust
from cryptography.hazmat.primitives.asymmetric import ec
hasher = argon2.PasswordHasher()
assert hasher.verify(hasher.hash("pairing secret"), "pairing secret")
ec.generate_private_key(ec.SECP256R1())
ssl.create_default_context()
import ifaddr, zeroconf.asyncio
assert ifaddr.get_adapters()
print("loaded")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded"


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_an_advertising_server_opens_only_address_families_the_unit_allows(tmp_path: Path) -> None:
    """A dual-stack server advertising over mDNS opens sockets only of RestrictAddressFamilies' families.

    It runs in a network namespace of its own (tests/netns.py), so the multicast stays there;
    a second machine's `discover` proves the advertisement really went out.
    """
    allowed = set(unit_settings()["RestrictAddressFamilies"][0].split())
    trace = tmp_path / "socket.trace"
    config = make_config(tmp_path / "state", server={"bind_address": f"[::]:{free_port()}"},
                         discovery={"mdns": "auto", "name": "traced"})
    config_path = write_config(tmp_path / "server.toml", config)
    with ExitStack() as stack:
        try:
            machines = stack.enter_context(two_machines())
        except NamespaceUnavailable as err:
            pytest.skip(str(err))
        server = subprocess.Popen(
            machines.server.command("strace", "-f", "-qq", "-e", "trace=socket", "-o", str(trace),
                                    sys.executable, "-m", "osnova_server", "--config", str(config_path), "serve"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            found = _discovered(machines.second)
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # strace lets go, the server shuts down
            _, err = server.communicate(timeout=30)

    assert found == ["traced"], err
    families = set(re.findall(r"socket\((AF_[A-Z0-9]+),", trace.read_text()))
    assert {"AF_INET", "AF_INET6", "AF_NETLINK"} <= families
    assert families <= allowed, f"the unit forbids {sorted(families - allowed)}"


def _discovered(machine: Machine, within: float = 60.0) -> list[str]:
    """The names `discover` on `machine` lists, asked again until one answers (strace is slow)."""
    deadline = time.monotonic() + within
    names: list[str] = []
    while not names and time.monotonic() < deadline:
        found = run_in(machine, [sys.executable, "-m", "osnova_server", "discover", "--json", "--timeout", "3"])
        names = [entry["name"] for entry in json.loads(found.stdout or "[]")]
    return names
