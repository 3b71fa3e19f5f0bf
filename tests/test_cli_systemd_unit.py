"""`osnova-server systemd-unit`: the packaged unit with this installation's ExecStart=, and --user."""

from __future__ import annotations

import grp
import os
import pwd
import sys
from pathlib import Path

import pytest

from osnova_server.cli.systemd_unit import packaged_unit
from tests.conftest import cli
from tests.test_systemd import NEEDS_ANALYZE, SYSTEM_UNITS, UNIT, verify_in_root


def _settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit's text, values in order."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_packaged_unit_is_the_one_in_the_tree() -> None:
    """One source of truth: the command reads the very file the unit tests check."""
    assert packaged_unit() == UNIT.read_text()


def test_exec_start_names_the_program_and_the_absolute_config(tmp_path: Path) -> None:
    """Run as `python -m`, the unit starts the script beside the interpreter (or `python -m`), with --config."""
    result = cli("--config", "server.toml", "systemd-unit")
    assert (result.returncode, result.stderr) == (0, "")
    beside = Path(sys.executable).parent / "osnova-server"
    program = str(beside) if beside.is_file() else f"{sys.executable} -m osnova_server"
    assert _settings(result.stdout)["ExecStart"] == [f"{program} --config {Path.cwd() / 'server.toml'} serve"]
    assert _settings(result.stdout)["DynamicUser"] == ["yes"]
    without = cli("systemd-unit", env={"OSNOVA_CONFIG": ""})
    assert _settings(without.stdout)["ExecStart"] == [f"{program} --config /etc/osnova/server.toml serve"]


def test_user_makes_a_static_user_unit() -> None:
    """--user NAME: DynamicUser=no, User=NAME, Group= its primary group."""
    me = pwd.getpwuid(os.getuid())
    result = cli("systemd-unit", "--user", me.pw_name)
    assert result.returncode == 0, result.stderr
    settings = _settings(result.stdout)
    assert (settings["DynamicUser"], settings["User"], settings["Group"]) == (
        ["no"], [me.pw_name], [grp.getgrgid(me.pw_gid).gr_name],
    )


def test_an_unknown_user_is_refused() -> None:
    """A user the machine does not have: exit 1, one line, no unit printed."""
    result = cli("systemd-unit", "--user", "no-such-user-here")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "osnova-server: no user 'no-such-user-here' on this machine; create it "
        "(`useradd --system no-such-user-here`) or pick another\n"
    )


@NEEDS_ANALYZE
@pytest.mark.skipif(SYSTEM_UNITS is None, reason="no system unit directory to verify against")
def test_a_path_with_spaces_is_quoted_and_verifies(tmp_path: Path) -> None:
    """A config under a directory with a space still gives a unit systemd accepts."""
    config = tmp_path / "my config" / "server.toml"
    result = cli("--config", str(config), "systemd-unit", "--user", pwd.getpwuid(os.getuid()).pw_name)
    assert f'--config "{config}" serve' in _settings(result.stdout)["ExecStart"][0]
    assert verify_in_root(tmp_path / "root", result.stdout) == ""
