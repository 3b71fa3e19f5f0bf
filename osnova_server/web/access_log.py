"""The access log: aiohttp's default line per answered request, cheaply.

aiohttp's own AccessLogger interprets its format string for every request (~20 µs on the event
loop, measured in BENCHMARKS.md). `AccessLog` writes the same text, word for word, for the one
format the server uses, `AccessLogger.LOG_FORMAT`: address, start time, request line, status,
body size, Referer and User-Agent. `[logging] access_log = false` turns it off altogether.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiohttp import hdrs
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from osnova_server.logs import ACCESS_LOGGER_NAME, record_template, stamped_record

_RECORD_BASE: Final = record_template(ACCESS_LOGGER_NAME, "")
_TIME_FORMAT: Final = "[%d/%b/%Y:%H:%M:%S %z]"
# `log` has a parameter named `time`, as aiohttp declares it.
_time_now: Final = time.time
_time_strftime: Final = time.strftime
_time_localtime: Final = time.localtime

# The last second an access line was stamped in, and its text: `[26/Nov/2026:10:00:00 +0000]`.
_access_second: tuple[int, str] = (-1, "")


class AccessLog(AbstractAccessLogger):
    """aiohttp's default access line, word for word; the time is formatted once a second."""

    __slots__ = ()

    @property
    def enabled(self) -> bool:
        """Whether access lines are written at all (checked once per connection by aiohttp)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Write the line of one answered request; `time` is the seconds it took."""
        global _access_second
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):  # a SIGHUP may have raised the level since
            return
        started = _time_now() - time
        second = int(started)
        cached_second, stamp = _access_second
        if cached_second != second:
            stamp = _time_strftime(_TIME_FORMAT, _time_localtime(second))
            _access_second = (second, stamp)
        version = request.version
        headers = request.headers
        record, attributes = stamped_record(_RECORD_BASE)
        attributes["name"] = logger.name
        attributes["msg"] = (
            f'{request.remote or "-"} {stamp} "{request.method} {request.path_qs} '
            f'HTTP/{version.major}.{version.minor}" {response.status} {response.body_length} '
            f'"{headers.get(hdrs.REFERER, "-")}" "{headers.get(hdrs.USER_AGENT, "-")}"'
        )
        logger.handle(record)
