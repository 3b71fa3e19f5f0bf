"""JSON in and out of the wire, through orjson when the `speedups` extra is installed.

Both paths agree on what they accept: strict JSON (no NaN, no numbers too large to be finite),
UTF-8 only, nesting bounded. A 100,000-deep document must be a parse error, never a crashed
worker: the stdlib parser turns its RecursionError into a ValueError, but orjson 3.8 crashes
the whole process on a deep enough object (measured: 100,000 levels of `{"a":` segfaults). So a
message goes to orjson only when it cannot nest deeper than `ORJSON_MAX_BRACKETS` (it has no
more brackets than that in all), and to the stdlib otherwise. Counting brackets is a memchr-speed
pass; the fast path keeps every ordinary request and batch.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

try:  # pragma: no cover - depends on the installed extra
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

USING_ORJSON: Final = orjson is not None
# A message with at most this many `[` and `{` nests at most this deep, well inside what
# orjson handles; a batch of 100 calls with params has about 300.
ORJSON_MAX_BRACKETS: Final = 1000

# orjson reads integers beyond 64 bits as floats, which would change such an id on its way
# back; a message with a run of digits this long goes to the stdlib, which keeps them exact.
_LONG_DIGITS: Final = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT: Final = re.compile(r"[0-9]{19}")


def _reject_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float, refusing ones too large to be finite (as orjson does)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError("number is infinity when parsed as double")
    return value


_decoder: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _suits_orjson(raw: bytes | str) -> bool:
    """Whether orjson parses this message safely and exactly (see the module docstring)."""
    # A message no longer than the bracket bound cannot hold more brackets than that.
    if isinstance(raw, bytes):
        if len(raw) > ORJSON_MAX_BRACKETS and raw.count(b"[") + raw.count(b"{") > ORJSON_MAX_BRACKETS:
            return False
        return _LONG_DIGITS.search(raw) is None
    if len(raw) > ORJSON_MAX_BRACKETS and raw.count("[") + raw.count("{") > ORJSON_MAX_BRACKETS:
        return False
    return _LONG_DIGITS_TEXT.search(raw) is None


def loads(raw: bytes | str) -> Any:
    """Parse JSON; raise ValueError (with a short reason) on anything that is not valid JSON."""
    if orjson is not None and _suits_orjson(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise ValueError(str(err).split(":", 1)[0]) from None
    return loads_stdlib(raw)


def loads_stdlib(raw: bytes | str) -> Any:
    """Parse JSON with the standard library, with the same refusals as the orjson path."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return _decoder.decode(text)
    except UnicodeDecodeError:
        raise ValueError("str is not valid UTF-8") from None
    except RecursionError:
        raise ValueError("nesting too deep") from None
    except json.JSONDecodeError as err:
        raise ValueError(err.msg) from None


def dumps(value: Any) -> bytes:
    """Serialise an answer to UTF-8 JSON bytes."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass  # e.g. an id beyond 64 bits; the stdlib handles it
    # ASCII escapes keep any str encodable, lone surrogates from a `\\ud800` escape included.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


__all__ = ["ORJSON_MAX_BRACKETS", "USING_ORJSON", "dumps", "loads", "loads_stdlib"]
