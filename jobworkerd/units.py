"""Parsing of sizes, rates and durations as people write them. Shared by the daemon and jobctl.

Sizes use powers of 1024: 512, 64K, 256M, 1.5G. Durations: 10, 10s, 500ms, 2m.
Every parser raises ValueError with a message that says what is accepted.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

MAX_SIZE = (1 << 63) - 1


def parse_size(text: str | int, what: str = "size") -> int:
    """'256M' -> 268435456. Accepts K, M, G, T (powers of 1024), optional 'B' or 'iB'."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE_RE.match(str(text))
        if not match:
            raise ValueError(
                f"{what} {text!r} is not a size: use a whole number of bytes "
                "or a number with K, M, G or T (powers of 1024), e.g. 256M"
            )
        # Decimal, not float: a float loses whole bytes above 2**53 (9007199254740993 -> ...992).
        number, suffix = Decimal(match.group(1)), match.group(2).upper()
        exact = number * _SIZE_FACTORS[suffix]
        if exact != int(exact):
            raise ValueError(f"{what} {text!r} is not a whole number of bytes")
        value = int(exact)
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {text!r}")
    if value > MAX_SIZE:
        raise ValueError(f"{what} {text!r} is too large (at most {MAX_SIZE} bytes)")
    return value


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """'10s' -> 10.0, '500ms' -> 0.5, bare numbers are seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _DURATION_RE.match(str(text))
        if not match:
            raise ValueError(f"{what} {text!r} is not a duration: use seconds (10, 2.5) or 500ms, 10s, 2m, 1h, 7d")
        value = float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite, non-negative number of seconds, got {text!r}")
    return value


def format_size(value: int) -> str:
    """268435456 -> '256M'; exact multiples only, else plain bytes."""
    for suffix in ("T", "G", "M", "K"):
        factor = _SIZE_FACTORS[suffix]
        if value and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)
