"""The one asynchronous interface of the annuaire's backends, and the factory.

Role: the secure agent, the search and the command line talk to a ``Directory``; which
backend is behind it (``ldap``: a real directory through ldap3; ``ldif``: the embedded
file, indexed in memory) is the configuration's choice (``[annuaire] backend``). One
contract test suite (``tests/annuaire/test_backend_contract.py``) runs against both,
the LDAP one on a real slapd.

Contract of every backend:
- Methods are coroutines that never block the event loop (LDAP calls and file loading
  run in worker threads).
- ``find_by_mail(address)``: the entries having ``address`` as a mailbox, compared
  case-insensitively (LDAP ``caseIgnoreIA5Match`` on ``mail``). Any string is
  accepted: an invalid, over-long, non-UTF-8 or filter-injecting one finds nothing and
  raises nothing.
- ``search(query, limit)``: at most ``limit`` entries that ``search.matches``
  accepts, and whether more existed (``Candidates.truncated``). Ranking and pages are
  ``search.search``'s job.
- ``DirectoryUnavailable`` when the directory cannot answer (all LDAP URLs down, a
  timeout, a refused bind, a missing or broken LDIF file): never an empty answer.
  An entry the backend cannot turn into a valid ``Entry`` is skipped with a warning.
- ``close()`` releases connections and threads; calling it twice is harmless.

Security: the backends read the directory with the configured identity only (anonymous
or ``bind_dn``); the bind password is read from ``bind_password_file`` once and never
logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from annuaire.model import Entry
from annuaire.search import Candidates, PreparedQuery
from gateway.config import AnnuaireSection


class Directory(Protocol):
    """A backend of the annuaire (see the module docstring for the contract)."""

    @property
    def description(self) -> str:
        """``ldif:/path`` or the LDAP URLs, for logs and messages (no secrets)."""
        ...

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]: ...

    async def search(self, query: PreparedQuery, limit: int) -> Candidates: ...

    async def close(self) -> None: ...


def open_directory(section: AnnuaireSection, *, anchors: Sequence[Path] = ()) -> Directory:
    """The backend ``section.backend`` names, configured from ``[annuaire]``.

    ``anchors`` (``[trust] anchors``) verify an ``ldaps://`` server when
    ``annuaire.ca_file`` is not set. Nothing is contacted or loaded yet: the first call
    does it (an LDIF file is loaded in a thread, LDAP connections are opened lazily).
    """
    if section.backend == "ldif":
        from annuaire.ldif_backend import LdifDirectory

        return LdifDirectory(section.ldif, section.attributes)
    from annuaire.ldap_backend import LdapDirectory

    return LdapDirectory.from_config(section, anchors=anchors)
