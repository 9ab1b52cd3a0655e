"""Value parsers of the configuration: durations and sizes (pure, no I/O).

Role: ``parse_duration`` and ``parse_size`` turn the configuration's durations and sizes
into ``timedelta`` and bytes, raising ``BadValue`` (``gateway.config.value_errors``)
with a message a sysadmin can act on.

Decisions (also documented in ``conf/missive.toml``):

- Durations: one or more ``<integer><unit>`` groups, units ``s`` ``m`` ``h`` ``d``
  ``w`` (a week is 7 days), e.g. ``"30s"``, ``"4h"``, ``"1h30m"``, ``"5d"``, ``"1w"``.
  No months or years (their length varies); no bare numbers (a unit is always needed).
- Sizes: a TOML integer is bytes; a string is ``<integer>`` bytes or ``<integer><unit>``
  with decimal units ``B`` ``KB`` ``MB`` ``GB`` ``TB`` (powers of 1000, so ``"50MB"`` is
  50,000,000 bytes: RFC 1870 SIZE and Postfix's ``message_size_limit`` count bytes,
  and mail sizes are quoted in decimal units) or binary units ``KiB`` ``MiB`` ``GiB``
  ``TiB`` (powers of 1024). Units are case-insensitive.

Security notes: a bad value is never echoed whole (``show`` truncates it).
"""

from __future__ import annotations

import re
from datetime import timedelta

from gateway.config.value_errors import BadValue, show

_DURATION_GROUP = re.compile(r"([0-9]{1,12})([smhdw])")  # ASCII digits, a bounded count
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


MAX_DURATION_SECONDS = 36_500 * 86_400  # 100 years: any later date arithmetic stays in range


def parse_duration(text: str) -> timedelta:
    """``"30s"`` ``"5m"`` ``"4h"`` ``"5d"`` ``"1w"`` ``"1h30m"`` -> ``timedelta``."""
    groups = _DURATION_GROUP.findall(text)
    if not text or "".join(n + u for n, u in groups) != text:
        raise BadValue(f'expected a duration like "30s", "5m", "4h", "5d", got {show(text)}')
    seconds = sum(int(number) * _DURATION_UNITS[unit] for number, unit in groups)
    if seconds > MAX_DURATION_SECONDS:  # "now - retention" must stay a date (year >= 1)
        raise BadValue(f"duration {show(text)} is too large (at most 100 years)")
    return timedelta(seconds=seconds)


_SIZE = re.compile(r"([0-9]{1,18})\s?([a-z]*)")  # ASCII digits, a bounded count
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: str | int) -> int:
    """Bytes from an integer or ``"512KB"`` ``"50MB"`` ``"1GB"`` ``"64MiB"`` (see module doc)."""
    if isinstance(value, int):
        if value < 0:
            raise BadValue(f"a size cannot be negative, got {value}")
        return value
    match = _SIZE.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise BadValue(f'expected a size like "50MB", "512KB" or bytes, got {show(value)}')
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
