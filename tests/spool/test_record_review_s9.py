"""Review (session 9, R1) of the duplicate-key check of ``gateway.spool.record``
(commit 6eff000): ``_no_duplicate_keys`` now finds the repeated key with
``key in keys[:index]`` for every index, a quadratic search, where the loop it replaced
was linear. The records it parses come from the spool and from the SMTP front over the
scribe link (``scribe_protocol.decode_open``: payloads up to 64 MiB, no record bound),
so a payload of many distinct keys and one repeat at the end costs the scribe
O(n^2) comparisons (measured 0.14 / 0.57 / 2.1 s of CPU for 5,000 / 10,000 / 20,000
keys). Counted here, not timed: string comparisons made to find the repeat.
"""

from __future__ import annotations

import pytest

from gateway.spool.model import RecordError
from gateway.spool.record import _no_duplicate_keys

COMPARISONS = [0]


class _CountingKey(str):
    """A key that counts the equality tests made on it (its hash is the string's)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        COMPARISONS[0] += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_repeated_key_is_found_in_linear_time() -> None:
    count = 2000
    pairs: list[tuple[str, object]] = [(_CountingKey(f"k{i}"), 0) for i in range(count)]
    pairs.append((_CountingKey("k0"), 1))
    COMPARISONS[0] = 0
    with pytest.raises(RecordError, match="duplicate key 'k0'"):
        _no_duplicate_keys(pairs)
    assert COMPARISONS[0] <= 10 * count, f"{COMPARISONS[0]} comparisons for {count} keys"
