"""The JSON codec: both parsers accept and refuse the same things, and nothing crashes the process."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from osnova_server.rpc import codec

PARSERS: list[Any] = [pytest.param(codec.loads, id="loads"), pytest.param(codec.loads_stdlib, id="stdlib")]

DEEP = 100_000


def nested(depth: int) -> list[Any]:
    """`depth` empty lists, each inside the next."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("raw", [
    pytest.param(b"[" * DEEP + b"]" * DEEP, id="deep-array"),
    pytest.param(b'{"a":' * DEEP + b"1" + b"}" * DEEP, id="deep-object"),
    pytest.param("[" * DEEP + "]" * DEEP, id="deep-array-text"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff", id="not-utf-8"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"[Infinity]", id="infinity"),
    pytest.param(b"1e400", id="overflowing-float"),
    pytest.param(b"[1,]", id="trailing-comma"),
    pytest.param(b"{'a': 1}", id="single-quotes"),
    pytest.param(b'{"a": 1} {"b": 2}', id="two-documents"),
])
def test_refuses_what_is_not_json_with_a_value_error(parse: Callable[[Any], Any], raw: bytes | str) -> None:
    with pytest.raises(ValueError) as caught:
        parse(raw)
    assert str(caught.value)


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"id": 123456789012345678901234567890}', {"id": 123456789012345678901234567890}),
    (b'{"id": -9223372036854775809}', {"id": -9223372036854775809}),
    (b'{"id": 18446744073709551615}', {"id": 18446744073709551615}),
    (b'{"id": 1.5}', {"id": 1.5}),
    ('{"s": "\u00fc\u2713"}'.encode(), {"s": "\u00fc\u2713"}),
    (b"[" * 200 + b"]" * 200, nested(200)),
])
def test_reads_numbers_and_nesting_exactly(parse: Callable[[Any], Any], raw: bytes, expected: Any) -> None:
    value = parse(raw)
    assert value == expected
    assert codec.loads(codec.dumps(value)) == expected


def test_dumps_keeps_big_integers_and_refuses_nan() -> None:
    assert codec.dumps({"id": 2**70}) == b'{"id":1180591620717411303424}'
    with pytest.raises(ValueError):
        codec.dumps({"result": float("nan")} | {"big": 2**70})  # the stdlib path refuses NaN


def test_dumps_escapes_lone_surrogates_instead_of_failing() -> None:
    value = codec.loads_stdlib(b'"\\ud800"')
    assert codec.loads_stdlib(codec.dumps({"id": value})) == {"id": value}


def test_a_deep_object_does_not_crash_a_fresh_process() -> None:
    """The crash this guards against kills the interpreter, so look from outside."""
    script = (
        "from osnova_server.rpc import codec\n"
        f"raw = b'{{\"a\":' * {DEEP} + b'1' + b'}}' * {DEEP}\n"
        "try:\n    codec.loads(raw)\nexcept ValueError:\n    print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "refused")


def _outcome(parse: Callable[[Any], Any], raw: bytes) -> tuple[str, Any]:
    """What parsing `raw` gives: ("value", it) or ("error", the message)."""
    try:
        return "value", parse(raw)
    except ValueError as err:
        return "error", str(err)


SAME_ANSWER = [
    b'"\\ud800"', b'["\\udfff", 1]', b'{"a": "x\\ud800y"}', b'"\\ud83d\\ude00"', b'{"a" 1}', b'{"a": 1',
    b"[1,]", b"NaN", b"[1e400]", b"\xff", b"", b'{"id": 18446744073709551616}', b'[-0, 0.0, 1E2, 1e-2]',
    b"[" * 1024 + b"]" * 1024, b"[" * 1025 + b"]" * 1025, b'{"a": 1, "a": 2}', b'"\\u0000"', b'"tab\there"',
]


@pytest.mark.parametrize("raw", SAME_ANSWER)
@pytest.mark.parametrize("extra", [b"", b"1234567890123456789"], ids=["plain", "with-19-digits"])
def test_the_fast_path_answers_exactly_as_the_stdlib_whatever_else_the_message_holds(raw: bytes, extra: bytes) -> None:
    message = raw if not extra else b'{"x": ' + extra + b', "y": ' + raw + b"}"
    assert _outcome(codec.loads, message) == _outcome(codec.loads_stdlib, message)


def test_a_lone_surrogate_is_read_as_a_string_on_every_path() -> None:
    # The params checks refuse it with -32602; the parser must not turn it into a parse error.
    assert codec.loads(b'{"s": "\\ud800"}') == {"s": "\ud800"}
    assert codec.loads(b'{"s": "\\ud800", "n": 1234567890123456789}') == {"s": "\ud800", "n": 1234567890123456789}


@pytest.mark.parametrize("text", [
    "", "1" * 18, "1" * 19, "0" * 19, "9" * 40, "[1, 123456789012345678]", '{"id": 1234567890123456789}',
    '{"id": 123456789012345678.9}', '{"id": -9223372036854775809}', "12345678901234567 89", "ид 1234567890123456789",
    "ид 123456789012345678", "٣" * 30, "12345678901234567\u0668\u0669",
])
def test_long_digit_runs_are_found_as_the_regular_expression_finds_them(text: str) -> None:
    expected = re.search(r"[0-9]{19}", text, re.ASCII) is not None
    assert codec._has_long_digits(text) is expected
    assert codec._has_long_digits(text.encode("utf-8")) is expected
