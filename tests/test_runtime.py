"""The runtime's start: a state_dir that cannot be used stops `serve` with one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from osnova_server.runtime import StateDirUnusable, make_state_dir
from tests.conftest import cli, make_config, write_config


def test_the_state_dir_is_made_0700_with_its_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state"
    make_state_dir(path)
    make_state_dir(path)  # already there: fine
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700


BAD_STATE_DIRS = [
    pytest.param("under-a-file", "Not a directory", id="under-a-file"),
    pytest.param("a-file", "File exists", id="a-file"),
    pytest.param("/proc/osnova-test-state", "No such file or directory", id="under-proc"),
]


def _bad_state_dir(tmp_path: Path, where: str) -> Path:
    """The state dir path of one BAD_STATE_DIRS case, with the file it collides with."""
    if where.startswith("/"):
        return Path(where)
    (tmp_path / "plain-file").write_text("not a directory\n")
    return tmp_path / "plain-file" / "state" if where == "under-a-file" else tmp_path / "plain-file"


@pytest.mark.parametrize(("where", "reason"), BAD_STATE_DIRS)
def test_a_state_dir_that_cannot_be_made_is_one_sentence(tmp_path: Path, where: str, reason: str) -> None:
    path = _bad_state_dir(tmp_path, where)
    with pytest.raises(StateDirUnusable) as refused:
        make_state_dir(path)
    assert str(refused.value) == (
        f"cannot use {path} as [server] state_dir: {reason}; set it to a directory this user may create and write"
    )


@pytest.mark.parametrize(("where", "reason"), BAD_STATE_DIRS)
def test_serve_with_such_a_state_dir_exits_1_with_one_line(tmp_path: Path, where: str, reason: str) -> None:
    path = _bad_state_dir(tmp_path, where)
    config_path = write_config(tmp_path / "server.toml", make_config(path))
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("--config", str(config_path), "serve", timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    expected = f"osnova-server: cannot use {path} as [server] state_dir: {reason}; "
    assert result.stderr.splitlines() == [expected + "set it to a directory this user may create and write"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if not where.startswith("/"):
        assert (tmp_path / "plain-file").read_text() == "not a directory\n"
    else:
        assert not path.exists()
