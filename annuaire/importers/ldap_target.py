"""Import target ``ldap``: idempotent upserts into the directory of ``[annuaire]``.

Role: write each merged entry to the LDAP server of the configuration (``url`` list,
``base_dn``, ``bind_dn`` + ``bind_password_file``, ``ca_file``, ``timeout``) with
ldap3: the entry is read at its DN (``uid=<key>,<base_dn>``), then added when absent,
modified when it differs, left alone when it is equal. Re-running an import therefore
updates entries and never duplicates them (one DN per key), and a second run over the
same extract sends no write at all ("unchanged").

What an update changes (the "managed" attributes of ``annuaire.mapping``):
- every attribute the new entry has is replaced by its new values;
- an attribute the new entry lacks is deleted, except: the certificate attributes (an
  extract never carries certificates; those in the directory were put there by
  someone else and must survive a re-import), and, for a format that has no mailbox
  column (RPPS), the mail attribute and ``missiveMailbox`` (an RPPS import must not
  erase the boxes an MSSanté import wrote for the same practitioner);
- object classes the entry needs and lacks are added, none is removed;
- attributes outside the managed set (added by an administrator) are never touched.
Values compare as sets of octets, so a change of case or accent is an update.

Failure behaviour: a refused entry (schema or constraint violation) is
``EntryRejected`` and the import goes on; what no entry could get past is a
``TargetError`` that stops it: no ``bind_dn`` configured (anonymous binds cannot
write), every URL unreachable, bind refused, no write rights, ``base_dn`` missing, the
health schema not loaded in the server, the connection lost midway. Entries already
written stay written; a re-run completes the import.

Connection: the URLs are tried in order; each is first probed with a plain TCP connect
(ldap3 2.9.1 leaks its socket when a connection is refused) then bound with a simple
bind (RFC 4513 §5.2) over ``ldaps://`` (``annuaire.ldap_backend.make_server``: verified
against ``ca_file``, else the trust anchors, host name checked) or plain ``ldap://``.
One ``SAFE_SYNC`` connection: the import is a batch command, not the event loop, and a
lost connection should stop it, not be silently retried for minutes as
``SAFE_RESTARTABLE`` would.

Security: the bind password is read from its file and never logged or put in an error
message; DNs are built by ``annuaire.mapping.entry_dn`` (RFC 4514 escaping) and the
only filter sent is the constant ``(objectClass=*)``, so no extract value reaches a
filter.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException

from annuaire.errors import DirectoryUnavailable
from annuaire.importers.errors import EntryRejected, TargetError
from annuaire.importers.sinks import Outcome
from annuaire.ldap_backend import make_server
from annuaire.mapping import (
    MAILBOX,
    entry_dn,
    entry_to_attributes,
    managed_attributes,
)
from annuaire.model import Entry
from gateway.config import AnnuaireAttributes, AnnuaireSection

# RFC 4511 Appendix A result codes the upsert tells apart
UNDEFINED_ATTRIBUTE_TYPE: Final = 17
INVALID_ATTRIBUTE_SYNTAX: Final = 21
NO_SUCH_OBJECT: Final = 32
INVALID_CREDENTIALS: Final = 49
INSUFFICIENT_ACCESS_RIGHTS: Final = 50
BUSY: Final = 51
UNAVAILABLE: Final = 52
UNWILLING_TO_PERFORM: Final = 53
ENTRY_ALREADY_EXISTS: Final = 68
_FATAL: Final = frozenset({INSUFFICIENT_ACCESS_RIGHTS, BUSY, UNAVAILABLE, UNWILLING_TO_PERFORM})
_DEFAULT_PORTS: Final = {"ldap": 389, "ldaps": 636}

Values = list[str | bytes]


def _octets(values: Sequence[str | bytes]) -> frozenset[bytes]:
    return frozenset(v.encode("utf-8") if isinstance(v, str) else v for v in values)


def _schema_missing(code: object, message: str) -> bool:
    """True for the answers slapd gives when the annuaire schema is not loaded: an
    undefined attribute type, or an object class it does not know (measured with slapd
    2.5: ``invalidAttributeSyntax``, "objectClass: value #N invalid per syntax")."""
    if code == UNDEFINED_ATTRIBUTE_TYPE:
        return True
    return code == INVALID_ATTRIBUTE_SYNTAX and message.lower().startswith("objectclass:")


class LdapUpsertSink:
    """Upserts entries under ``base_dn`` through one bound ldap3 connection."""

    def __init__(
        self,
        connection: Any,
        base_dn: str,
        attributes: AnnuaireAttributes,
        *,
        carries_mailboxes: bool,
        health_schema: bool = True,
    ) -> None:
        self._connection = connection
        self._base_dn = base_dn
        self._attributes = attributes
        self._health_schema = health_schema
        managed = managed_attributes(attributes, health_schema=health_schema)
        kept = {name.lower() for name in attributes.certificate}
        if not carries_mailboxes:
            kept |= {attributes.mail.lower(), MAILBOX.lower()}
        self._read_names = list(dict.fromkeys(["objectClass", *managed, *attributes.certificate]))
        self._clearable = [name for name in managed if name.lower() not in kept]

    def put(self, entry: Entry) -> Outcome:
        dn = entry_dn(entry, self._base_dn)
        wanted = entry_to_attributes(entry, self._attributes, health_schema=self._health_schema)
        current = self._read(dn)
        if current is None:
            if self._add(dn, wanted):
                return "added"
            current = self._read(dn)  # added by someone else meanwhile: update it
            if current is None:
                raise EntryRejected(f"{dn}: the server reports it exists but cannot read it")
        changes = self._changes(wanted, current)
        if not changes:
            return "unchanged"
        self._call("modify", dn, changes)
        return "updated"

    # -- LDAP operations ---------------------------------------------------------------

    def _read(self, dn: str) -> dict[str, frozenset[bytes]] | None:
        """The entry's current values (lower-cased names), None when it does not exist."""
        ok, result, response, _ = self._request(
            "search", dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=self._read_names
        )
        if not ok:
            if result["result"] == NO_SUCH_OBJECT:
                return None
            self._refuse(dn, "read", result)
        found = [item for item in response if item.get("type") == "searchResEntry"]
        if not found:
            return None
        raw: dict[str, list[bytes]] = found[0]["raw_attributes"]
        return {name.lower(): frozenset(values) for name, values in raw.items()}

    def _add(self, dn: str, wanted: dict[str, Values]) -> bool:
        """Add the entry; False when it exists already (a concurrent writer)."""
        ok, result, _, _ = self._request("add", dn, attributes=wanted)
        if ok:
            return True
        if result["result"] == ENTRY_ALREADY_EXISTS:
            return False
        if result["result"] == NO_SUCH_OBJECT:
            raise TargetError(
                f"LDAP: the base DN {self._base_dn!r} does not exist in the directory "
                "(create it first, or fix [annuaire] base_dn)"
            )
        self._refuse(dn, "add", result)

    def _call(self, operation: str, dn: str, changes: dict[str, list[tuple[str, Values]]]) -> None:
        ok, result, _, _ = self._request(operation, dn, changes)
        if not ok:
            self._refuse(dn, operation, result)

    def _request(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._connection, operation)(*args, **kwargs)
        except LDAPException as error:
            raise TargetError(f"LDAP: {operation} failed: {error}") from None

    def _refuse(self, dn: str, operation: str, result: dict[str, Any]) -> NoReturn:
        """Raise the error a failed operation calls for (fatal or for this entry)."""
        code = result.get("result")
        reason = f"{result.get('description')} ({code}): {result.get('message') or ''}".rstrip()
        if code in _FATAL:
            raise TargetError(f"LDAP: {operation} of {dn} refused: {reason}")
        if _schema_missing(code, str(result.get("message") or "")):
            raise TargetError(
                f"LDAP: {operation} of {dn} refused: {reason}; is the annuaire schema "
                "(annuaire/schema/missive-sante.schema) loaded in the server?"
            )
        raise EntryRejected(f"{operation} refused: {reason}")

    # -- diff --------------------------------------------------------------------------

    def _changes(
        self, wanted: dict[str, Values], current: dict[str, frozenset[bytes]]
    ) -> dict[str, list[tuple[str, Values]]]:
        """The ldap3 ``modify`` changes turning ``current`` into ``wanted``."""
        changes: dict[str, list[tuple[str, Values]]] = {}
        classes = {
            value.decode("utf-8", "replace").lower() for value in current.get("objectclass", ())
        }
        missing: Values = [c for c in wanted["objectClass"] if str(c).lower() not in classes]
        if missing:
            changes["objectClass"] = [(ldap3.MODIFY_ADD, missing)]
        for name, values in wanted.items():
            if name != "objectClass" and _octets(values) != current.get(name.lower(), frozenset()):
                changes[name] = [(ldap3.MODIFY_REPLACE, values)]
        for name in self._clearable:
            if name not in wanted and current.get(name.lower()):
                changes[name] = [(ldap3.MODIFY_REPLACE, [])]
        return changes


# -- connection ------------------------------------------------------------------------


def _read_password(path: Path | None) -> str:
    """The first line of the bind password file (never logged, never in a message)."""
    if path is None:
        raise TargetError("LDAP: [annuaire] bind_password_file is required with bind_dn")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TargetError(f"{path}: cannot read the bind password ({error})") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise TargetError(f"{path}: the bind password file is empty")
    return password


def _reachable(url: str, timeout: float) -> str | None:
    """None when a TCP connection to the URL's host and port succeeds, else why not."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 389)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{url}: {error.strerror or error}"
    return None


class _Unreachable(Exception):
    """This URL cannot be used (connection or TLS failure): try the next one."""


def _bind(url: str, section: AnnuaireSection, password: str, anchors: Sequence[Path]) -> Any:
    timeout = section.timeout.total_seconds()
    ca_files = (section.ca_file,) if section.ca_file is not None else tuple(anchors)
    try:
        server = make_server(url, timeout=timeout, ca_files=ca_files)
    except DirectoryUnavailable as error:
        raise TargetError(str(error)) from None
    connection = ldap3.Connection(
        server,
        user=section.bind_dn,
        password=password,
        client_strategy=ldap3.SAFE_SYNC,
        receive_timeout=max(1, math.ceil(timeout)),  # ldap3 packs it as whole seconds
        raise_exceptions=False,
    )
    try:
        connection.open()
        ok, result, _, _ = connection.bind()
    except LDAPException as error:
        connection.unbind()
        raise _Unreachable(f"{url}: {error}") from None
    if not ok:
        connection.unbind()
        code = result.get("result")
        if code == INVALID_CREDENTIALS:
            raise TargetError(f"LDAP: {url}: bind as {section.bind_dn!r} refused (bad credentials)")
        raise TargetError(f"LDAP: {url}: bind refused: {result.get('description')} ({code})")
    return connection


def _close(connection: Any) -> None:
    """Unbind, quietly: after a lost connection there is nothing left to tell."""
    try:
        connection.unbind()
    except LDAPException:
        pass


@contextmanager
def ldap_writer(section: AnnuaireSection, anchors: Sequence[Path]) -> Iterator[Any]:
    """A bound ldap3 connection with the configured write identity, unbound at exit."""
    if section.bind_dn is None:
        raise TargetError(
            "LDAP: writing needs a bind DN with write rights: set [annuaire] bind_dn and "
            "bind_password_file (anonymous binds can only read)"
        )
    password = _read_password(section.bind_password_file)
    failures: list[str] = []
    for url in section.url:
        why = _reachable(url, section.timeout.total_seconds())
        if why is not None:
            failures.append(why)
            continue
        try:
            connection = _bind(url, section, password, anchors)
        except _Unreachable as error:
            failures.append(str(error))
            continue
        try:
            yield connection
        finally:
            _close(connection)
        return
    raise TargetError(["LDAP: no directory server reachable:", *failures])


@contextmanager
def ldap_sink(
    section: AnnuaireSection,
    anchors: Sequence[Path],
    *,
    carries_mailboxes: bool,
    health_schema: bool = True,
    base_dn: str | None = None,
) -> Iterator[LdapUpsertSink]:
    """An ``LdapUpsertSink`` on the configured directory (see ``ldap_writer``)."""
    with ldap_writer(section, anchors) as connection:
        yield LdapUpsertSink(
            connection,
            base_dn or section.base_dn,
            section.attributes,
            carries_mailboxes=carries_mailboxes,
            health_schema=health_schema,
        )
