"""Errors of the audit trail.

``AuditDatabaseError`` is a ``MissiveError`` (exit status 2 from the CLI: the database
is missing, unreadable or not an audit trail: a setup problem for the operator).
``AuditWriteError`` reaches the callers of ``AuditSink.record``: the record was *not*
committed, so the stage must not report success (an SMTP front answers 451, fail
closed). ``AuditSinkClosed`` is a programming error: recording after shutdown.
"""

from __future__ import annotations

from gateway.errors import MissiveError


class AuditDatabaseError(MissiveError):
    """The audit database cannot be used (missing, unreadable, not an audit trail)."""


class AuditWriteError(Exception):
    """A batch of records could not be committed; none of them is in the trail."""


class AuditSinkClosed(RuntimeError):
    """``record``/``append`` was called on a sink that is not running."""
