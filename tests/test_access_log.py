"""The access log: aiohttp's default line, word for word, written by the cheaper AccessLog."""

from __future__ import annotations

import logging
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_log import AccessLogger

from osnova_server.web.access_log import AccessLog

STAMP = re.compile(r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]")


@pytest.mark.parametrize(("method", "path", "headers", "status", "body"), [
    ("GET", "/health", {}, 200, b'{"status":"healthy"}'),
    ("POST", "/rpc?x=1&y=%20", {"Referer": "http://lan/app", "User-Agent": "osnova/1.0"}, 401, b"{}"),
    ("GET", "/no-such-page", {"User-Agent": 'quote " inside'}, 404, b""),
])
def test_the_line_is_aiohttps_own(
    method: str, path: str, headers: dict[str, str], status: int, body: bytes, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    logger = logging.getLogger("aiohttp.access")
    request = make_mocked_request(method, path, headers=headers)
    response = web.Response(body=body, status=status)
    AccessLogger(logger, AccessLogger.LOG_FORMAT).log(request, response, 0.0015)
    AccessLog(logger, AccessLogger.LOG_FORMAT).log(request, response, 0.0015)
    theirs, ours = (record.getMessage() for record in caplog.records)
    assert STAMP.search(ours), ours
    assert STAMP.sub("[T]", ours) == STAMP.sub("[T]", theirs)
    assert all(record.name == "aiohttp.access" and record.levelno == logging.INFO for record in caplog.records)


def test_nothing_is_written_above_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aiohttp.access")
    access = AccessLog(logging.getLogger("aiohttp.access"), AccessLogger.LOG_FORMAT)
    assert not access.enabled
    access.log(make_mocked_request("GET", "/health"), web.Response(), 0.001)
    assert not caplog.records
