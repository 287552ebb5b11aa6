"""Human token counts ("500B", "12.5M") so budgets in configs read like the paper's tables."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_PATTERN = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


def parse_token_count(value: int | float | str, *, field: str = "tokens") -> int:
    """Return an exact integer from 8192, "8192", "12.5M", "500B" or "1e9"; errors name ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a token count, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{field}: {value!r} is not a whole number of tokens")
        return int(value)
    match = _PATTERN.match(str(value))
    if not match:
        raise ValueError(f"{field}: cannot read {value!r} as a token count (examples: 8192, '12.5M', '500B')")
    number, suffix = match.groups()
    total = float(number) * _SUFFIX[suffix.upper()]
    if abs(total - round(total)) > 1e-6 * max(1.0, total):
        raise ValueError(f"{field}: {value!r} is not a whole number of tokens")
    return int(round(total))


def format_token_count(tokens: int) -> str:
    """Short human form used in logs and reports: 500000000000 -> '500B'."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(tokens) >= scale:
            text = f"{tokens / scale:.3g}"
            return f"{text}{suffix}"
    return str(tokens)
