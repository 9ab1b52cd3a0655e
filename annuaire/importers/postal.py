"""Postal address pieces shared by the importers (AFNOR NF Z10-011 line model).

A French postal address has up to six lines: 1 recipient, 2 complement (building,
service), 3 geographic complement (stairs, wing), 4 number + street, 5 special mention
(BP, lieu-dit), 6 postcode + city (``ligne d'acheminement``). The annuaire keeps lines
2-5 in ``Entry.postal_address`` (the recipient is the entry's name and organisation),
and line 6 split into ``postal_code`` and ``city``. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ROUTING_LINE = re.compile(r"([0-9]{5})\s+(.+)")


def text_or_none(value: str) -> str | None:
    """The value, or None for an empty one (the model stores absence as None)."""
    return value or None


def street_line(*parts: str) -> str:
    """Line 4 from its non-empty parts, single-spaced (``12 BIS RUE DE LA PAIX``)."""
    return " ".join(part for part in parts if part)


def address_lines(lines: Iterable[str], *, skip: str | None = None) -> tuple[str, ...]:
    """The non-empty lines in order, without repeats and without ``skip`` (the
    organisation name, which extracts often repeat as the first complement)."""
    seen: set[str] = set()
    kept: list[str] = []
    for line in lines:
        folded = line.casefold()
        if line and folded not in seen and (skip is None or folded != skip.casefold()):
            seen.add(folded)
            kept.append(line)
    return tuple(kept)


def city_of_routing_line(routing: str, postal_code: str) -> str | None:
    """The city of a line 6 (``"75015 PARIS"`` -> ``"PARIS"``; ``"PARIS CEDEX 15"``
    stays whole), or None when the line is empty."""
    if not routing:
        return None
    if postal_code and routing.startswith(postal_code):
        return routing[len(postal_code) :].strip() or None
    match = _ROUTING_LINE.fullmatch(routing)
    return match.group(2) if match else routing
