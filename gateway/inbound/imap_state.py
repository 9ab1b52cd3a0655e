"""The IMAP fetcher's state: the mailbox's UIDVALIDITY and the last UID handled.

Role: ``FetchState`` is what ``<state_dir>/imap-<hash>.json`` holds (one file per
user/host/port/mailbox, named by ``state_file_name``); the fetcher
(``gateway.inbound.imap_fetch``, which imports this module) reads it and writes it
(0600, atomically with fsync by ``gateway.pki.files.replace_file``) after each message.

Invariants: a file that does not hold a valid state reads as None (the fetcher then
starts over, skipping messages already ``\\Seen``: never lose, at most duplicate);
the file name reveals neither the user nor the server. Trust level: pure; no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from gateway.config.model import ImapFetch


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
        if not all(type(n) is int and n >= 0 for n in (uidvalidity, last_uid)):
            return None
        return cls(uidvalidity, last_uid)


def state_file_name(fetch: ImapFetch) -> str:
    """One state file per user, server and mailbox; the name reveals neither."""
    digest = hashlib.sha256(f"{fetch.user}\x00{fetch.url}".encode()).hexdigest()
    return f"imap-{digest[:24]}.json"
