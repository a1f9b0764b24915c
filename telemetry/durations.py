"""Durations written the way people say them: `45s`, `90m`, `1h`, `3d`, `1d12h`."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> int:
    """Whole seconds of `3d`, `1h30m`, `90m`, `45s`, or plain seconds (`3600`); anything else is a ValueError."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 45s, 90m, 1h, 3d)")
    return sum(int(count or 0) * seconds for count, seconds in zip(match.groups(), _UNIT_SECONDS.values(), strict=True))
