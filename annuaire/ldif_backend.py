"""The embedded annuaire backend: an LDIF file loaded and indexed in memory.

Role: the default backend of ``missive serve`` (``[annuaire] backend = "ldif"``): no
server to run, the file is the directory. Implements ``annuaire.backend.Directory``.

Behaviour:
- Loading: the file is parsed with the streaming reader (``annuaire.ldif``) in a worker
  thread (``asyncio.to_thread``), never on the event loop. Records that are annuaire
  entries (``objectClass: inetOrgPerson`` or a mail attribute) become ``Entry`` objects
  through ``annuaire.mapping``; the others (suffix, OUs) are ignored; an entry that
  breaks a model invariant is skipped, and the load logs how many were.
- Index: mailbox address (case-folded) -> entries; the search keys of every entry
  (``searchkeys.search_keys``, the same keys slapd indexes) in one sorted list with
  posting arrays, so a word prefix is a binary search; national id, profession and
  specialty codes and department -> entries. Each criterion of a query yields a
  candidate set, the sets are intersected, and ``search.matches`` confirms each entry.
  Repeated strings (cities, labels) are interned to keep memory down; this backend is
  meant for a hospital's or a region's annuaire, the national extract (500,000 entries)
  belongs in slapd.
- Reload: at most every ``check_interval`` seconds a call compares the file's
  (inode, size, mtime) with the loaded one and reloads in a thread when it changed
  (one ``os.stat``: cheap). A file that changes while it is read is read again next
  time. Replace the file atomically (write a new one, rename it over), as
  ``annuaire.ldif.atomic_ldif_file`` does.
- Failure: if the first load fails (file missing, unreadable, malformed),
  ``DirectoryUnavailable`` names the file and the line; if a *reload* fails, the last
  good index keeps serving and the error is logged (a sysadmin's half-edited file must
  not take the gateway's directory away).
"""

from __future__ import annotations

import asyncio
import bisect
import os
import sys
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from annuaire.errors import DirectoryUnavailable, EntryError, LdifError
from annuaire.ldif import LdifRecord, read_ldif_file
from annuaire.mapping import attributes_to_entry, mail_values
from annuaire.model import Entry, address_key
from annuaire.search import Candidates, PreparedQuery, Words, matches
from annuaire.searchkeys import (
    CITY,
    DEPARTMENT,
    MAX_KEY_TOKEN_LENGTH,
    NAME,
    PROFESSION,
    REGION,
    SPECIALTY,
    fold,
    search_keys,
)
from gateway.config import AnnuaireAttributes
from gateway.log import get_logger

log = get_logger("annuaire")

DEFAULT_CHECK_INTERVAL = 1.0
Signature = tuple[int, int, int]
_INTERNED_FIELDS = (
    "profession_code",
    "profession_label",
    "specialty_code",
    "specialty_label",
    "organisation",
    "postal_code",
    "city",
    "department",
    "region",
)


def file_signature(path: Path) -> Signature:
    """(inode, size, mtime in ns): what changes when the file is replaced or edited."""
    status = os.stat(path)
    return (status.st_ino, status.st_size, status.st_mtime_ns)


class _Index:
    """An immutable in-memory view of one version of the file."""

    def __init__(
        self, entries: list[Entry], mail_keys: list[frozenset[str]], signature: Signature
    ) -> None:
        self.signature = signature
        self.entries = tuple(entries)
        self.by_mail: dict[str, list[int]] = {}
        self.by_code: dict[str, list[int]] = {}
        postings: dict[str, array[int]] = {}
        for number, (entry, mails) in enumerate(zip(self.entries, mail_keys, strict=True)):
            for mail in mails:
                self.by_mail.setdefault(mail, []).append(number)
            for code in _codes(entry):
                self.by_code.setdefault(code, []).append(number)
            for key in search_keys(entry):
                postings.setdefault(sys.intern(key), array("I")).append(number)
        self.keys = sorted(postings)
        self.postings = postings

    def with_prefix(self, prefix: str) -> set[int]:
        """Entries having a search key that starts with ``prefix``."""
        found: set[int] = set()
        start = bisect.bisect_left(self.keys, prefix)
        for key in self.keys[start:]:
            if not key.startswith(prefix):
                break
            found.update(self.postings[key])
        return found

    def with_words(self, field: str, words: Words) -> set[int]:
        sets = [self.with_prefix(f"{field}:{w[:MAX_KEY_TOKEN_LENGTH]}") for w in words.words]
        return set.intersection(*sets)

    def with_code(self, kind: str, value: str) -> set[int]:
        return set(self.by_code.get(f"{kind}:{fold(value)}", ()))


def _codes(entry: Entry) -> list[str]:
    pairs = (
        ("id", entry.national_id),
        ("profession", entry.profession_code),
        ("specialty", entry.specialty_code),
        ("department", entry.department),
    )
    return [f"{kind}:{fold(value)}" for kind, value in pairs if value]


def _candidate_sets(index: _Index, query: PreparedQuery) -> list[set[int]]:
    """One set per criterion the index can answer (a superset of the matches)."""
    sets: list[set[int]] = []
    if query.name is not None:
        sets.append(index.with_words(NAME, query.name))
    for field, kind, words in (
        (PROFESSION, "profession", query.profession),
        (SPECIALTY, "specialty", query.specialty),
        (DEPARTMENT, "department", query.department),
    ):
        if words is not None:
            sets.append(index.with_code(kind, words.whole) | index.with_words(field, words))
    for field, words in ((CITY, query.city), (REGION, query.region)):
        if words is not None:
            sets.append(index.with_words(field, words))
    if query.national_ids:
        sets.append(set().union(*(index.with_code("id", i) for i in query.national_ids)))
    return sets


def _intern(entry: Entry) -> Entry:
    """The same entry with its repeated strings (labels, cities...) interned, so the
    thousands of entries of one city share one string. The entry was checked when built
    and the values do not change, hence the direct attribute writes on the frozen
    object (``dataclasses.replace`` would check everything again)."""
    for name in _INTERNED_FIELDS:
        value = getattr(entry, name)
        if isinstance(value, str):
            object.__setattr__(entry, name, sys.intern(value))
    return entry


def _is_annuaire_record(record: LdifRecord, mail_attribute: str) -> bool:
    classes = {value.lower() for value in record.values("objectClass")}
    return b"inetorgperson" in classes or bool(record.values(mail_attribute))


def load_entries(
    path: Path, attributes: AnnuaireAttributes
) -> tuple[list[Entry], list[frozenset[str]], int]:
    """Every annuaire entry of the LDIF file, the mail values of each (case-folded:
    mailboxes and, for an organisation, its bare domain) and the number of records
    skipped as invalid; ``LdifError`` for a malformed file, ``OSError`` for an
    unreadable one."""
    entries: list[Entry] = []
    mail_keys: list[frozenset[str]] = []
    skipped = 0
    for record in read_ldif_file(path):
        if not _is_annuaire_record(record, attributes.mail):
            continue
        try:
            entry = attributes_to_entry(record.dn, record.attributes, attributes)
        except EntryError as error:
            skipped += 1
            log.warning(
                "annuaire.ldif.entry_skipped", file=str(path), line=record.line, reason=str(error)
            )
            continue
        entries.append(_intern(entry))
        mails = mail_values(record.attributes, attributes) + list(entry.addresses)
        mail_keys.append(frozenset(address_key(mail) for mail in mails))
    return entries, mail_keys, skipped


def build_index(path: Path, attributes: AnnuaireAttributes) -> _Index:
    """Load and index the file (runs in a worker thread)."""
    before = file_signature(path)
    entries, mail_keys, skipped = load_entries(path, attributes)
    if file_signature(path) != before:
        raise _ChangedWhileReading()
    log.info("annuaire.ldif.loaded", file=str(path), entries=len(entries), skipped=skipped)
    return _Index(entries, mail_keys, before)


class _ChangedWhileReading(Exception):
    """The file changed during the load: its content may be a mix of two versions."""


@dataclass
class _State:
    index: _Index | None = None
    checked_at: float = float("-inf")


class LdifDirectory:
    """``annuaire.backend.Directory`` over an LDIF file (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        attributes: AnnuaireAttributes,
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.attributes = attributes
        self.check_interval = check_interval
        self._clock = clock
        self._state = _State()
        self._lock = asyncio.Lock()

    @property
    def description(self) -> str:
        return f"ldif:{self.path}"

    @property
    def entry_count(self) -> int:
        """Entries of the loaded index (0 before the first call)."""
        index = self._state.index
        return len(index.entries) if index is not None else 0

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        index = await self._current()
        numbers = index.by_mail.get(address_key(address), ())
        return tuple(index.entries[n] for n in numbers)

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        index = await self._current()
        sets = _candidate_sets(index, query)
        numbers: Iterable[int] = (
            sorted(set.intersection(*sets)) if sets else range(len(index.entries))
        )
        found: list[Entry] = []
        for number in numbers:
            entry = index.entries[number]
            if matches(entry, query):
                if len(found) == limit:
                    return Candidates(tuple(found), truncated=True)
                found.append(entry)
        return Candidates(tuple(found))

    async def close(self) -> None:
        self._state = _State()

    async def reload(self) -> None:
        """Check the file now (ignoring ``check_interval``) and reload it if it changed."""
        self._state.checked_at = float("-inf")
        await self._current()

    # -- loading -----------------------------------------------------------------------

    async def _current(self) -> _Index:
        state = self._state
        if state.index is not None and self._clock() - state.checked_at < self.check_interval:
            return state.index
        async with self._lock:
            if state.index is None or self._clock() - state.checked_at >= self.check_interval:
                await self._refresh(state)
        if state.index is None:
            raise DirectoryUnavailable(f"annuaire {self.path}: not loaded")
        return state.index

    async def _refresh(self, state: _State) -> None:
        state.checked_at = self._clock()
        try:
            signature = await asyncio.to_thread(file_signature, self.path)
            if state.index is not None and signature == state.index.signature:
                return
            state.index = await asyncio.to_thread(build_index, self.path, self.attributes)
        except _ChangedWhileReading:
            state.checked_at = float("-inf")
            if state.index is None:
                raise DirectoryUnavailable(
                    f"annuaire {self.path}: the file changed while it was read; retry"
                ) from None
        except (OSError, LdifError) as error:
            self._load_failed(state, error)

    def _load_failed(self, state: _State, error: OSError | LdifError) -> None:
        reason = str(error) if isinstance(error, LdifError) else _os_reason(error)
        if state.index is None:
            raise DirectoryUnavailable(f"annuaire {self.path}: {reason}") from None
        log.error(
            "annuaire.ldif.reload_failed",
            file=str(self.path),
            reason=reason,
            kept_entries=len(state.index.entries),
        )


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__
