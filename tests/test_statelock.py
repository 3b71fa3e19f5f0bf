"""The state-dir lock: one owner at a time, the holder's PID named, released by the kernel on kill -9."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from osnova_server import config as config_module
from osnova_server.server import Server, StartupError
from osnova_server.statelock import LOCK_NAME, StateDirBusy, StateLock, holder_pid, server_pid
from tests.conftest import ServerProcess, cli, free_port, lock_holder, make_config, running_server, write_config

Start = Callable[..., ServerProcess]


def test_a_second_lock_is_refused_naming_the_holder(state_dir: Path) -> None:
    with StateLock.acquire(state_dir):
        with pytest.raises(StateDirBusy) as refused:
            StateLock.acquire(state_dir)
        assert refused.value.pid == os.getpid()
        assert f"(PID {os.getpid()})" in str(refused.value)
        assert holder_pid(state_dir) == os.getpid()
    assert holder_pid(state_dir) is None
    StateLock.acquire(state_dir).release()  # free again once released


def test_the_lock_file_is_private(state_dir: Path) -> None:
    with StateLock.acquire(state_dir):
        assert (state_dir / LOCK_NAME).stat().st_mode & 0o777 == 0o600


def test_the_lock_says_whether_its_holder_is_a_server(state_dir: Path) -> None:
    # `cert renew` and `rotate-secret` SIGHUP a server only: a migration or restore would die of it.
    for holder, server in (("serve", os.getpid()), ("migrate", None), ("restore", None)):
        with StateLock.acquire(state_dir, holder):
            assert (holder_pid(state_dir), server_pid(state_dir)) == (os.getpid(), server)
            assert (state_dir / LOCK_NAME).read_text() == f"{os.getpid()} {holder}\n"
    assert (holder_pid(state_dir), server_pid(state_dir)) == (None, None)


def test_a_lock_file_with_a_pid_alone_is_a_server_of_an_earlier_version(state_dir: Path) -> None:
    with StateLock.acquire(state_dir):
        (state_dir / LOCK_NAME).write_text(f"{os.getpid()}\n")  # what versions before the kinds wrote
        assert server_pid(state_dir) == os.getpid()


def test_kill_9_releases_the_lock(state_dir: Path) -> None:
    with lock_holder(state_dir) as holder:  # SIGKILLed when the block ends
        with pytest.raises(StateDirBusy) as refused:
            StateLock.acquire(state_dir)
        assert refused.value.pid == holder.pid
    # The PID of the dead holder is still written in the file; only the flock counts.
    assert (state_dir / LOCK_NAME).read_text() == f"{holder.pid} serve\n"
    assert holder_pid(state_dir) is None
    StateLock.acquire(state_dir).release()


async def test_a_second_server_in_one_process_is_refused(state_dir: Path) -> None:
    config = make_config(state_dir)
    async with running_server(config) as first:
        second = Server(config)
        with pytest.raises(StartupError) as refused:
            await second.start()
        assert refused.value.exit_code == 1
        assert f"(PID {os.getpid()})" in str(refused.value)
        # The first goes on serving.
        async with first.client(admin=True) as client:
            assert (await client.call("status.get"))["status"] in ("ok", "degraded")


def test_a_second_serve_exits_1_naming_the_pid(tmp_path: Path, server_process: Start) -> None:
    port = free_port()
    config = make_config(tmp_path / "state")
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}")
    path = write_config(tmp_path / "server.toml", config)
    first = server_process(path)
    first.wait_ready(f"http://127.0.0.1:{port}")
    before = sorted(p.name for p in (tmp_path / "state").iterdir())

    # Another port, so the refusal can only come from the state dir.
    other = config_module.replace(config, "server", bind_address=f"127.0.0.1:{free_port()}")
    second = cli("--config", str(write_config(tmp_path / "other.toml", other)), "serve")

    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"(PID {first.process.pid})" in lines[0]
    assert str(tmp_path / "state") in lines[0]
    assert first.process.poll() is None
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == before
    assert (tmp_path / "state" / LOCK_NAME).read_text() == f"{first.process.pid} serve\n"
    code, _ = first.stop()
    assert code == 0
    # Once the first has stopped, the state dir is free for the next one.
    deadline = time.monotonic() + 5
    while holder_pid(tmp_path / "state") is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert holder_pid(tmp_path / "state") is None
