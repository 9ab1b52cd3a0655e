"""The IMAP fetcher's state: the mailbox's UIDVALIDITY and the last UID handled.

Role: ``FetchState`` is what ``<state_dir>/imap-<hash>.json`` holds (one file per
user/host/port/mailbox, named by ``state_file_name``); the fetcher
(``gateway.inbound.imap_fetch``, which imports this module) reads it and writes it
(0600, atomically with fsync by ``gateway.pki.files.replace_file``) after each message
is queued (before its ``\\Seen`` STORE) or passed over, and again at the start of each
session; a failed write is an ``ImapStateError``. ``FetchState.uids_went_back`` tells a
state that a SELECT answer contradicts (same UIDVALIDITY, UIDNEXT at or below the last
UID: the fetcher then removes the state and starts over as below).

Invariants: a file that does not hold a valid state (numbers of ``0..UID_MAX``, the
32-bit range of RFC 9051 §9) reads as None (the fetcher then starts over, skipping
messages already ``\\Seen``: never lose, at most duplicate);
the file name reveals neither the user nor the server. ``ImapStateError`` is an
``OSError`` of its own so the fetcher tells it from a network error: it ends the session
and waits the longest back-off (every session would otherwise queue the same message
again). Trust level: pure; no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from gateway.config.model import ImapFetch
from gateway.inbound.imap_parse import UID_MAX


class ImapStateError(OSError):
    """The state file could not be written (disk full, read-only, permissions)."""


@dataclass(frozen=True, slots=True)
class FetchState:
    """The mailbox's UIDVALIDITY and the last UID handed to the queue."""

    uidvalidity: int
    last_uid: int

    def to_json(self) -> bytes:
        data = {"uidvalidity": self.uidvalidity, "last_uid": self.last_uid}
        return json.dumps(data).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> FetchState | None:
        """The state, or None when the file does not hold a valid one."""
        try:
            value = json.loads(data)
            uidvalidity, last_uid = value["uidvalidity"], value["last_uid"]
        except (ValueError, TypeError, KeyError):
            return None
        if not all(type(n) is int and 0 <= n <= UID_MAX for n in (uidvalidity, last_uid)):
            return None
        return cls(uidvalidity, last_uid)

    def uids_went_back(self, uidvalidity: int, uidnext: int | None) -> bool:
        """Whether a SELECT answer (same UIDVALIDITY, UIDNEXT at or below our last UID)
        shows the mailbox renumbered without a new UIDVALIDITY (RFC 9051 §2.3.1.1
        forbids it; a restored mailbox does it): the state no longer describes it."""
        same = uidvalidity == self.uidvalidity
        return same and uidnext is not None and uidnext <= self.last_uid


def state_file_name(fetch: ImapFetch) -> str:
    """One state file per user, server and mailbox; the name reveals neither."""
    digest = hashlib.sha256(f"{fetch.user}\x00{fetch.url}".encode()).hexdigest()
    return f"imap-{digest[:24]}.json"
