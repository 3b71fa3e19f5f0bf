"""The wheel: built from a copy of the tree once per run, then checked and run from an install.

One module-scoped build (a few seconds, no network: `--no-isolation` uses the installed
setuptools), so the rest of the suite never waits on it.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from osnova_server import __version__
from tests.test_systemd import NEEDS_ANALYZE, SYSTEM_UNITS, verify_in_root

REPO: Final = Path(__file__).resolve().parent.parent
SOURCES: Final = ("osnova_server", "setup.cfg", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the sources (the shared tree gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (root / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Iterator[Path]:
    """The wheel installed with `pip install --no-deps --target` (the dependencies are ours already)."""
    target = wheel.parent.parent / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    yield target


def _run(target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command with only the installed copy of osnova_server importable (not the tree)."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=env, cwd=target.parent)


def test_wheel_holds_the_package_schema_and_no_tests(wheel: Path) -> None:
    """The manifest schema and py.typed ship; tests and benchmarks do not."""
    assert wheel.name == f"osnova_server-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "osnova_server/schemas/osnova-manifest.schema.json" in names
    assert "osnova_server/py.typed" in names
    assert "osnova_server/units/osnova-server.service" in names
    assert "osnova_server/__main__.py" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]


def test_wheel_declares_the_console_script_and_dependencies(wheel: Path) -> None:
    """`osnova-server = osnova_server.cli:main`; the base dependencies and both extras."""
    with zipfile.ZipFile(wheel) as archive:
        dist_info = f"osnova_server-{__version__}.dist-info"
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        metadata = email.message_from_bytes(archive.read(f"{dist_info}/METADATA"))
    assert "[console_scripts]\nosnova-server = osnova_server.cli:main" in entry_points
    assert metadata["Name"] == "osnova-server"
    assert metadata["Requires-Python"] == ">=3.11"
    requires = " ".join(metadata.get_all("Requires-Dist") or [])
    for dependency in ("aiohttp", "aiohttp-cors", "aiojobs", "pyjwt", "argon2-cffi", "aioprometheus", "tomli-w"):
        assert dependency in requires.lower()
    assert set(metadata.get_all("Provides-Extra") or []) >= {"test", "speedups"}


def test_installed_console_script_runs_like_python_m(installed: Path) -> None:
    """The installed script and `python -m osnova_server` print the same, from the installed copy."""
    script = installed / "bin" / "osnova-server"
    assert script.exists()
    for args in (("version",), ("no-such-command",)):
        by_script = _run(installed, str(script), *args)
        by_module = _run(installed, sys.executable, "-m", "osnova_server", *args)
        assert (by_script.returncode, by_script.stdout, by_script.stderr) == (
            by_module.returncode,
            by_module.stdout,
            by_module.stderr,
        )
    assert _run(installed, str(script), "version").stdout == f"osnova-server {__version__}\n"
    where = _run(installed, sys.executable, "-c", "import osnova_server; print(osnova_server.__file__)")
    assert where.stdout.startswith(str(installed))


def test_installed_package_finds_its_schema(installed: Path) -> None:
    """The schema is read through the package, so it works from a wheel and not only from the tree."""
    code = (
        "import importlib.resources, json; "
        "path = importlib.resources.files('osnova_server') / 'schemas' / 'osnova-manifest.schema.json'; "
        "print(json.loads(path.read_text())['title'])"
    )
    result = _run(installed, sys.executable, "-c", code)
    assert (result.returncode, result.stdout) == (0, "Osnova Application Manifest\n"), result.stderr


@NEEDS_ANALYZE
@pytest.mark.skipif(SYSTEM_UNITS is None, reason="no system unit directory to verify against")
def test_wheel_carries_the_unit_and_systemd_unit_names_the_installed_script(installed: Path, tmp_path: Path) -> None:
    """From the wheel alone, `systemd-unit` prints the packaged unit with ExecStart= the installed script."""
    script = installed / "bin" / "osnova-server"
    config = tmp_path / "server.toml"
    result = _run(installed, str(script), "--config", str(config), "systemd-unit")
    assert (result.returncode, result.stderr) == (0, "")
    exec_start = [line for line in result.stdout.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [f"ExecStart={script} --config {config} serve"]
    packaged = (installed / "osnova_server" / "units" / "osnova-server.service").read_text()
    assert [line for line in result.stdout.splitlines() if not line.startswith("ExecStart=")] == [
        line for line in packaged.splitlines() if not line.startswith("ExecStart=")
    ]
    assert verify_in_root(tmp_path / "root", result.stdout) == ""


def test_wheel_holds_every_file_of_the_admin_page(wheel: Path) -> None:
    """The admin page's templates and static files ship, every one that is in the tree."""
    names = set(zipfile.ZipFile(wheel).namelist())
    admin = REPO / "osnova_server" / "web" / "admin"
    files = [path for folder in ("static", "templates") for path in (admin / folder).iterdir() if path.is_file()]
    assert {"admin.js", "admin.css", "login.js", "index.html", "notice.html"} <= {path.name for path in files}
    for path in files:
        assert path.relative_to(REPO).as_posix() in names


def test_ci_runs_the_readme_test_command_word_for_word() -> None:
    """The newcomer's one-line test command in README.md is the line `.ci/run` ends with."""
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").rstrip("\n").splitlines()
    command = ci_lines[-1]
    assert command.endswith(".venv/bin/python -m pytest -n 2 -q")
    assert "apt-get update" in command
    readme_lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert command in readme_lines
    # Every Debian package the tests need is in the command itself, not in a step before it.
    assert not any("apt-get install" in line for line in ci_lines[:-1])
