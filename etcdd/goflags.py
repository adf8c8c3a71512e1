"""Flag values parsed as Go parses them (`strconv`, `time.ParseDuration`, etcd `pkg/flags`).

A core: pure, no IO. Each parser takes the raw string and returns the value or raises
`BadValueError` with Go's reason (``parse error``, ``invalid value`` ...).
"""
from __future__ import annotations

import re
from collections.abc import Callable

from etcdd.urls import go_quote


class BadValueError(ValueError):
    """A flag value Go would refuse; the message is Go's reason (``parse error``, ...)."""


_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_INT_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def parse_bool(s: str) -> bool:
    """Go ``strconv.ParseBool``."""
    if s in _GO_TRUE or s in _GO_FALSE:
        return s in _GO_TRUE
    raise BadValueError("parse error")


def integer(bits: int, signed: bool) -> Callable[[str], int]:
    """Go ``strconv.Parse(U)Int(s, 0, bits)`` as the ``flag`` package uses it."""
    def parse(s: str) -> int:
        body, sign = s, 1
        if signed and body[:1] in ("+", "-"):
            sign, body = (-1 if body[0] == "-" else 1), body[1:]
        base, digits = 10, body
        if len(body) > 1 and body[0] == "0":
            prefix = body[1].lower()
            base, digits = {"x": (16, body[2:]), "b": (2, body[2:]),
                            "o": (8, body[2:])}.get(prefix, (8, body[1:]))
        if not digits or any(ch not in _INT_DIGITS[base] + "_" for ch in digits):
            raise BadValueError("parse error")
        try:
            value = sign * int(digits, base)
        except ValueError:
            raise BadValueError("parse error") from None
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        if not low <= value <= high:
            raise BadValueError("value out of range")
        return value
    return parse


def uint32(s: str) -> int:
    """etcd ``flags.Uint32Value``: ``strconv.ParseUint(s, 10, 32)`` with strconv's errors."""
    if not s.isdigit() or not s.isascii():
        raise BadValueError(f'strconv.ParseUint: parsing {go_quote(s)}: invalid syntax')
    if int(s) >= 2 ** 32:
        raise BadValueError(f'strconv.ParseUint: parsing {go_quote(s)}: value out of range')
    return int(s)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
                   "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)([a-z\u00b5\u03bc]*)")


def parse_duration(s: str) -> float:
    """Go ``time.ParseDuration`` in seconds: ``"1h30m"``, ``"100ms"``, ``"0"``."""
    body = s[1:] if s[:1] in ("+", "-") else s
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"time: invalid duration {go_quote(s)}")
    total, pos = 0.0, 0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(f"time: invalid duration {go_quote(s)}")
        if not m.group(2):
            raise ValueError(f"time: missing unit in duration {go_quote(s)}")
        if m.group(2) not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {go_quote(m.group(2))} in duration {go_quote(s)}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return -total if s.startswith("-") else total


def duration(s: str) -> float:
    try:
        return parse_duration(s)
    except ValueError:
        raise BadValueError("parse error") from None


def strings(unique: bool) -> Callable[[str], tuple[str, ...]]:
    def parse(s: str) -> tuple[str, ...]:
        parts = [p for p in s.split(",") if p] if s else []
        return tuple(sorted(set(parts))) if unique else tuple(parts)
    return parse


def choice(*valid: str) -> Callable[[str], str]:
    def parse(s: str) -> str:
        if s not in valid:
            raise BadValueError("invalid value")
        return s
    return parse


def text(s: str) -> str:
    return s
