"""Errors of the spool, each with its meaning for the one that must answer a peer.

Two families:

- ``SpoolError`` and its subclasses reach the stages (the SMTP front above all). Each
  carries the SMTP reply it stands for (STYLE 7): ``reply_code``, ``enhanced_code``
  (RFC 3463) and a ``public_text`` that never names a path, a file or a configuration
  value; the cause stays in the log. The front turns one into a reply in one place.
- ``EntryNotFound`` and ``EntryStateError`` are ``MissiveError``s: an operator asked
  the queue for something (``missive queue hold ID``) that cannot be done. The CLI
  prints them and exits 2 (no such entry) or 1 (the entry exists but is in a state the
  action does not apply to, for instance being processed in ``active/``).

``AuditWriteError`` (``gateway.audit``) is not wrapped: when the trail cannot record
an acceptance, the caller must not acknowledge (451), and it reaches the caller as is.
"""

from __future__ import annotations

from gateway.errors import MissiveError, UsageError


class SpoolError(Exception):
    """Something the spool could not do; the message is for the log, not for a peer."""

    reply_code = 451
    enhanced_code = "4.3.0"
    public_text = "Requested action aborted: local error in processing"


class SpoolWriteError(SpoolError):
    """An entry could not be written durably: nothing was acknowledged (RFC 5321 451)."""


class SpoolFull(SpoolWriteError):
    """The file system is full (ENOSPC, EDQUOT): RFC 5321 452, RFC 3463 4.3.1."""

    reply_code = 452
    enhanced_code = "4.3.1"
    public_text = "Insufficient system storage"


class MessageTooLarge(SpoolError):
    """The content passed ``[delivery] max_message_size`` (RFC 1870 §6: 552, 5.3.4).

    Raised by ``EntryWriter.write`` as soon as the limit is passed; the partial file
    is already removed and the refusal recorded, so the front only has to read the
    rest of DATA up to the final dot and answer.
    """

    reply_code = 552
    enhanced_code = "5.3.4"
    public_text = "Message size exceeds fixed maximum message size"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"message larger than {limit} bytes")


class CorruptEntry(SpoolError):
    """A queue file does not validate (truncated, bad checksum, unknown version, ...).

    ``reason`` is one line for the log and the audit trail. Raised by the readers; the
    queue moves such a file to ``corrupt/`` (never deletes it).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SpoolBusy(SpoolError):
    """Another process already consumes this stage (holds its ``consumer.lock``)."""


class EntryNotFound(UsageError):
    """No entry has this id in the spool (exit status 2 from the CLI)."""


class EntryStateError(MissiveError):
    """The entry exists but the action does not apply to its state (exit status 1)."""

    status = 1
