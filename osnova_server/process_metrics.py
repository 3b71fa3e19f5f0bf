"""The `process_*` metrics every Prometheus exporter has: CPU, memory, file descriptors, start time.

Written here from /proc and the standard library because aioprometheus, our metrics library,
has no process collector, and prometheus_client's (which reads the same /proc files) renders
only into its own registry. The names and meanings are prometheus_client's, so existing
dashboards work unchanged.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Final

from aioprometheus import Counter, Gauge, Registry

_PAGE_BYTES: Final = resource.getpagesize()
_TICKS_PER_SECOND: Final = os.sysconf("SC_CLK_TCK")
_PROC_SELF: Final = Path("/proc/self")


def _boot_time() -> float:
    """When the machine booted, in epoch seconds (`btime` in /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return time.time() - time.monotonic()


def _start_time() -> float:
    """When this process started, in epoch seconds (field 22 of /proc/self/stat, in clock ticks)."""
    stat = (_PROC_SELF / "stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return _boot_time() + int(fields[19]) / _TICKS_PER_SECOND


START_TIME: Final = _start_time()


def collectors(registry: Registry) -> dict[str, Counter | Gauge]:
    """Register the process collectors in `registry`."""
    return {
        "cpu": Counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", registry=registry),
        "rss": Gauge("process_resident_memory_bytes", "Resident memory size in bytes.", registry=registry),
        "vms": Gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", registry=registry),
        "fds": Gauge("process_open_fds", "Number of open file descriptors.", registry=registry),
        "max_fds": Gauge("process_max_fds", "Maximum number of open file descriptors.", registry=registry),
        "start": Gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                       registry=registry),
    }


def publish(metrics: dict[str, Counter | Gauge]) -> None:
    """Read the process's numbers now and set them (a few small /proc reads)."""
    times = os.times()
    metrics["cpu"].set({}, times.user + times.system)
    size, resident = (int(field) for field in (_PROC_SELF / "statm").read_text().split()[:2])
    metrics["rss"].set({}, resident * _PAGE_BYTES)
    metrics["vms"].set({}, size * _PAGE_BYTES)
    metrics["fds"].set({}, len(os.listdir(_PROC_SELF / "fd")))
    metrics["max_fds"].set({}, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    metrics["start"].set({}, START_TIME)
