"""Typed errors of the annuaire (the health-professional directory).

Role: one small vocabulary shared by the model, the LDIF codec, both backends, the
search and the certificate lookup. Every error is a ``gateway.errors.MissiveError``, so
the command line prints its problem lines and exits with its ``status`` (2) instead of
showing a traceback.

Invariants:
- ``DirectoryUnavailable`` means "the directory could not be asked" (every LDAP URL
  down, a timeout, a refused bind, an unreadable or broken LDIF file, DNS CERT servers
  failing). It is never turned into "no certificate": the secure agent keeps the
  message and retries (product contract: an unreachable directory is an error the
  caller sees).
- ``EntryError`` is a bad *value* (an invalid address, a control character in a name);
  importers report it with the line number and skip the row.
- Messages never carry a bind password or a certificate; they may carry an LDAP URL,
  a file path and a line number, which a sysadmin needs.
"""

from __future__ import annotations

from gateway.errors import MissiveError


class AnnuaireError(MissiveError):
    """Base of the annuaire's errors (exit status 2 on the command line)."""


class EntryError(AnnuaireError, ValueError):
    """A value cannot belong to a directory entry (bad address, control characters...)."""


class LdifError(AnnuaireError):
    """Malformed or unsupported LDIF (RFC 2849); ``line`` is 1-based, 0 when unknown."""

    def __init__(self, problem: str, *, source: str = "<ldif>", line: int = 0) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {problem}")


class SearchError(AnnuaireError):
    """A search request that cannot be run as asked (no criterion, bad page number)."""


class DirectoryUnavailable(AnnuaireError):
    """The directory (or DNS CERT) could not be queried; the caller must retry later."""
