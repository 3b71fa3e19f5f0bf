"""Start-up time: process start of `osnova-server serve` to its first 200 from /health, as bench/run.py times it.

    python bench/startup.py [--starts 5] [--stacks asyncio,uvloop] [CHECKOUT ...]

Each CHECKOUT (a directory holding `osnova_server/`; default: this one) is started in turn,
start after start, so that two checkouts (say main and a branch) are compared under the same
machine load. Also times `osnova-server version`. Uses bench/run.py's config and command lines
(servers pinned to CPU 0, uvloop hidden on the `asyncio` stack), and prints the median of each.
Each checkout's bytecode is compiled first (`python -m compileall`, as pip does when it installs
the wheel), so the times are those of an installed server, even with PYTHONDONTWRITEBYTECODE=1
in the environment (which would otherwise make every start compile every module again).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # bench/run.py: the same config, command lines and readiness poll


def child_env(checkout: Path) -> dict[str, str]:
    """The environment that makes a child import osnova_server from `checkout`."""
    return {**os.environ, "PYTHONPATH": str(checkout)}


def start_to_ready(checkout: Path, stack: run.Stack, workdir: Path) -> float:
    """Seconds from starting `serve` to the first 200 from /health."""
    process, _, seconds = run.launch_osnova(workdir, stack, env=child_env(checkout))
    process.stop()
    return seconds


def main() -> int:
    """Time every checkout on every stack, taking turns, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[run.ROOT], metavar="CHECKOUT")
    parser.add_argument("--starts", type=int, default=run.STARTS)
    parser.add_argument("--stacks", default="asyncio,uvloop", help="comma-separated: asyncio, uvloop")
    args = parser.parse_args()
    checkouts = [path.resolve() for path in args.checkouts]
    stacks = [run.STACKS[name] for name in args.stacks.split(",") if name]
    for checkout in checkouts:
        run.compile_bytecode(checkout)
    ready: dict[tuple[Path, str], list[float]] = {}
    version: dict[tuple[Path, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="osnova-startup-") as tmp:
        # The children run `python -c` and `python -m`, which put their working directory first
        # on sys.path: started from a checkout, every child would import that one's osnova_server.
        os.chdir(tmp)
        for _ in range(args.starts):
            for stack in stacks:
                for checkout in checkouts:
                    key = (checkout, stack.name)
                    ready.setdefault(key, []).append(start_to_ready(checkout, stack, Path(tmp)))
                    version.setdefault(key, []).append(run.version_seconds(stack, child_env(checkout)))
    for (checkout, stack_name), times in ready.items():
        print(f"{checkout} {stack_name}: start to ready {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}), version {statistics.median(version[checkout, stack_name]) * 1000:.0f} ms "
              f"(median of {args.starts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
