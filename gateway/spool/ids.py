"""Queue ids: unique, sortable by time, safe as file names, never reused.

A queue id is 26 characters of Crockford base32 (``0-9`` and ``A-Z`` without ``I L O
U``), the shape of a ULID: 10 characters of the acceptance time in milliseconds since
the Unix epoch (48 bits, good until the year 10889) and 16 characters (80 bits) of
randomness from ``secrets``. So:

- ``sorted(ids)`` is arrival order to the millisecond (``ls incoming/`` lists the
  oldest first), and ``queue_id_time`` gives the acceptance time back;
- an id is a plain file name on every file system (no ``/``, no dot, no case clash on
  a case-insensitive one: the alphabet has one case);
- two ids collide only if 80 random bits do within one millisecond: ids are never
  reused and never derived from a counter that a restart could reset.

A *child* id (``child_queue_id``) names the entry a stage hands to the next one: the
parent's time part, then 80 bits of SHA-256 over the parent id and a key chosen by the
stage (the route, the recipient batch). The same hand-off done twice (after a crash)
gives the same child id, so the second attempt finds the first and writes nothing:
hand-offs are idempotent, keyed by queue id (issue 5). Children sort with their parent.

Written by hand: ULID libraries exist, but this is 20 lines with no dependency and the
child derivation is Missive's own.

Trust level: pure functions, no I/O except the clock and ``secrets``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from datetime import UTC, datetime
from typing import NewType

QueueId = NewType("QueueId", str)

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
ID_LENGTH = 26
_TIME_CHARS = 10
_RANDOM_BITS = 80
_ID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+/-]{0,127}")


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _time_part(milliseconds: int) -> str:
    if not 0 <= milliseconds < 1 << 48:
        raise ValueError("time out of range for a queue id")
    return _base32(milliseconds, _TIME_CHARS)


def new_queue_id(now: float | None = None) -> QueueId:
    """A fresh id for an entry accepted at ``now`` (seconds since the epoch; default now)."""
    milliseconds = int((time.time() if now is None else now) * 1000)
    return QueueId(_time_part(milliseconds) + _base32(secrets.randbits(_RANDOM_BITS), 16))


def child_queue_id(parent: QueueId, key: str) -> QueueId:
    """The id of the entry that the hand-off ``key`` of ``parent`` creates (deterministic).

    ``key`` names the hand-off within the parent (``relay/clinique-b``, ``bcc-2``,
    ``dsn-failure``); ``ValueError`` unless it is 1-128 characters of
    ``[A-Za-z0-9_.:@+/-]`` starting with a letter or digit.
    """
    if not is_queue_id(parent):
        raise ValueError(f"not a queue id: {parent!r}")
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"bad hand-off key {key!r}")
    digest = hashlib.sha256(f"{parent}/{key}".encode("ascii")).digest()
    random_part = int.from_bytes(digest[:10], "big")
    return QueueId(parent[:_TIME_CHARS] + _base32(random_part, 16))


def is_queue_id(text: str) -> bool:
    """True when ``text`` has the shape of a queue id."""
    return bool(_ID_RE.fullmatch(text))


def parse_queue_id(text: str) -> QueueId:
    """``text`` as a ``QueueId``; ``ValueError`` when it is not one."""
    if not is_queue_id(text):
        raise ValueError(f"not a queue id (26 characters of 0-9 A-Z without I L O U): {text!r}")
    return QueueId(text)


def queue_id_time(queue_id: QueueId) -> datetime:
    """When the entry (or, for a child, its first ancestor) was accepted, to the millisecond."""
    milliseconds = 0
    for char in queue_id[:_TIME_CHARS]:
        milliseconds = milliseconds * 32 + ALPHABET.index(char)
    return datetime.fromtimestamp(milliseconds / 1000, UTC)
