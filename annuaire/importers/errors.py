"""Errors of the annuaire importers: one bad row, or a whole import that cannot go on.

- ``RowError``: one row of an extract is unusable (wrong column count, bad encoding,
  invalid mailbox address or national id...). The pipeline reports it with its line
  number and skips the row; it never stops an import.
- ``ExtractFormatError``: the file is not an extract of the format asked for (missing
  columns in the header, empty file). Nothing is written.
- ``TargetError``: the destination cannot be written (LDAP unreachable, bind refused, no
  write rights, base DN missing, output directory missing). The import stops; an LDIF
  output keeps its previous content, an LDAP directory keeps what was already upserted
  (each upsert is idempotent, so re-running the import finishes the job).

Both fatal errors are ``gateway.errors.MissiveError``: the command line prints their
lines on stderr and exits 2, never with a traceback.
"""

from __future__ import annotations

from gateway.errors import MissiveError, UsageError


class RowError(ValueError):
    """One row is bad; ``str(error)`` says why in a few words (no row content beyond
    the offending value, which is public extract data)."""


class ExtractFormatError(UsageError):
    """The input is not an extract of the requested format."""


class TargetError(MissiveError):
    """The import target cannot be written; the import stops."""


class EntryRejected(Exception):
    """The target refused one entry (an LDAP schema or constraint violation); the
    pipeline counts it as failed, reports it with its first line, and goes on."""
