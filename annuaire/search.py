"""Search of the annuaire: what a doctor uses to find a colleague.

Role: turn a ``SearchQuery`` (name, profession, specialty, city, postcode, department,
region, national id) into one ranked, paginated ``SearchPage``. The matching rules and
the ranking are pure functions of this module; a backend only narrows the candidates
(slapd with ``ldap_filter``, the LDIF index with the search keys) and every candidate is
confirmed with ``matches``, so both backends give the same answers.

Matching (all given criteria must hold; text is compared through ``searchkeys.fold``,
i.e. case- and accent-insensitively):
- name: every word of the query is the prefix of a word of the display name, given
  name or surname (``"hel dup"`` finds *Hélène L'Œuvre-Dupré*);
- profession, specialty: the code equals the query, or every query word prefixes a word
  of the label (``"cardio"``, ``"SM04"``);
- city, region: every query word prefixes a word of the value;
- department: a code (up to 3 characters, ``"2A"``, ``"75"``, ``"974"``) must be equal;
  a longer query is matched by word prefixes against the stored value;
- postcode: prefix (``"75"`` finds all of Paris);
- national id: equal; 11 digits also match ``"8"`` + the digits (an RPPS number
  given without the identification-nationale prefix).

Ranking: with a name, an exact whole-name or surname match first, then more query words
equal to whole words, then surnames starting with the first word; ties (and queries
without a name) in alphabetical order of surname, given name, key.

Bad input (RFC 4515 injection probes, NUL, 10 KB strings, non-UTF-8 text arriving as
lone surrogates) never reaches a server unescaped and never raises: a term longer than
``MAX_TERM_LENGTH``, holding a control character (slapd ends an assertion value at an
escaped NUL: measured, ``mail=x\\00`` matched ``x``) or not valid Unicode matches
nothing; every value placed in an LDAP filter goes through ``ldap3``'s
``escape_filter_chars``. A query without any criterion
or a bad page number is a ``SearchError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from ldap3.utils.conv import escape_filter_chars

from annuaire import mapping
from annuaire.errors import SearchError
from annuaire.model import Entry
from annuaire.searchkeys import (
    CITY,
    DEPARTMENT,
    MAX_KEY_TOKEN_LENGTH,
    NAME,
    PROFESSION,
    REGION,
    SPECIALTY,
    fold,
    tokens,
)

if TYPE_CHECKING:
    from gateway.config import AnnuaireAttributes

MAX_TERM_LENGTH = 128
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
DEFAULT_MAX_CANDIDATES = 1000
_CODE_LENGTH = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """What the user asked for; ``None`` or blank means "any"."""

    name: str | None = None
    profession: str | None = None
    specialty: str | None = None
    city: str | None = None
    postcode: str | None = None
    department: str | None = None
    region: str | None = None
    national_id: str | None = None

    def criteria(self) -> dict[str, str]:
        """The given criteria, stripped."""
        found = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value.strip() for name, value in found.items() if value and value.strip()}


@dataclass(frozen=True, slots=True)
class Words:
    """One text criterion: the folded whole and its words."""

    whole: str
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """A query checked and folded once; what backends receive."""

    name: Words | None = None
    profession: Words | None = None
    specialty: Words | None = None
    city: Words | None = None
    postcode: str | None = None
    department: Words | None = None
    region: Words | None = None
    national_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Candidates:
    """Matching entries a backend found, at most the limit it was given."""

    entries: tuple[Entry, ...]
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of ranked results; ``total`` counts every match found (at most the
    candidate limit: ``truncated`` says the directory had more)."""

    entries: tuple[Entry, ...]
    total: int
    page: int
    page_size: int
    truncated: bool = False

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


class Searchable(Protocol):
    """The part of a directory backend the search needs."""

    async def search(self, query: PreparedQuery, limit: int) -> Candidates: ...


# ------------------------------------------------------------------ preparing
def _usable(term: str) -> bool:
    if len(term) > MAX_TERM_LENGTH or _CONTROL.search(term):
        return False
    try:
        term.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _words(term: str) -> Words | None:
    words = tuple(tokens(term))
    return Words(fold(term), words) if words else None


def prepare(query: SearchQuery) -> PreparedQuery | None:
    """Check and fold ``query``; ``None`` when it can match nothing (a term too long,
    not valid Unicode, or without any letter or digit); ``SearchError`` when empty."""
    criteria = query.criteria()
    if not criteria:
        raise SearchError("give at least one search criterion")
    if not all(_usable(term) for term in criteria.values()):
        return None
    text = {
        name: _words(criteria[name])
        for name in ("name", "profession", "specialty", "city", "department", "region")
        if name in criteria
    }
    if any(words is None for words in text.values()):
        return None
    national_ids: tuple[str, ...] = ()
    if "national_id" in criteria:
        ident = criteria["national_id"]
        national_ids = (ident, "8" + ident) if ident.isdigit() and len(ident) == 11 else (ident,)
    return PreparedQuery(
        name=text.get("name"),
        profession=text.get("profession"),
        specialty=text.get("specialty"),
        city=text.get("city"),
        postcode=criteria.get("postcode"),
        department=text.get("department"),
        region=text.get("region"),
        national_ids=national_ids,
    )


# ------------------------------------------------------------------ matching
def _prefixes_all(words: Sequence[str], values: Sequence[str | None]) -> bool:
    """Every query word is the prefix of some word of ``values``."""
    have = [word for value in values if value for word in tokens(value)]
    return all(any(h.startswith(w) for h in have) for w in words)


def _is_code(words: Words) -> bool:
    return len(words.whole) <= _CODE_LENGTH and len(words.words) == 1


def _code_or_label(words: Words, code: str | None, label: str | None) -> bool:
    if code is not None and fold(code) == words.whole:
        return True
    return _prefixes_all(words.words, (label,))


def _department(words: Words, value: str | None) -> bool:
    if value is None:
        return False
    if _is_code(words):
        return fold(value) == words.whole
    return _prefixes_all(words.words, (value,))


def matches(entry: Entry, query: PreparedQuery) -> bool:
    """True when ``entry`` satisfies every criterion of ``query``."""
    checks = (
        query.name is None
        or _prefixes_all(query.name.words, (entry.display_name, entry.given_name, entry.surname)),
        query.profession is None
        or _code_or_label(query.profession, entry.profession_code, entry.profession_label),
        query.specialty is None
        or _code_or_label(query.specialty, entry.specialty_code, entry.specialty_label),
        query.city is None or _prefixes_all(query.city.words, (entry.city,)),
        query.region is None or _prefixes_all(query.region.words, (entry.region,)),
        query.department is None or _department(query.department, entry.department),
        query.postcode is None
        or (entry.postal_code or "").replace(" ", "").startswith(query.postcode.replace(" ", "")),
        not query.national_ids
        or (entry.national_id or "").casefold() in {i.casefold() for i in query.national_ids},
    )
    return all(checks)


# ------------------------------------------------------------------ ranking
def rank_key(entry: Entry, query: PreparedQuery) -> tuple[int, int, int, str, str, str]:
    """Sort key: best matches first (see the module docstring)."""
    surname = fold(entry.surname or entry.display_name)
    given = fold(entry.given_name or "")
    if query.name is None:
        return (0, 0, 0, surname, given, entry.key)
    whole = query.name.whole
    exact = int(whole in (fold(entry.display_name), surname, f"{given} {surname}".strip()))
    names = set(
        tokens(" ".join(n for n in (entry.display_name, entry.given_name, entry.surname) if n))
    )
    equal_words = sum(1 for word in query.name.words if word in names)
    starts = int(surname.startswith(query.name.words[0]))
    return (-exact, -equal_words, -starts, surname, given, entry.key)


def rank(entries: Sequence[Entry], query: PreparedQuery) -> list[Entry]:
    return sorted(entries, key=lambda entry: rank_key(entry, query))


# ------------------------------------------------------------------ LDAP filter
def _escape(value: str) -> str:
    escaped: str = escape_filter_chars(value)
    return escaped


def _keys_filter(field: str, words: Words) -> str:
    parts = [
        f"({mapping.SEARCH_KEY}={field}:{_escape(w[:MAX_KEY_TOKEN_LENGTH])}*)" for w in words.words
    ]
    return parts[0] if len(parts) == 1 else "(&" + "".join(parts) + ")"


def _any(*parts: str) -> str:
    return parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"


def _name_filter(words: Words) -> str:
    """Search keys, or for a directory without them the inetOrgPerson names."""
    per_word = []
    for word in words.words:
        value = _escape(word)
        per_word.append(
            _any(
                f"({mapping.SEARCH_KEY}={NAME}:{_escape(word[:MAX_KEY_TOKEN_LENGTH])}*)",
                f"({mapping.SN}={value}*)",
                f"({mapping.GIVEN_NAME}={value}*)",
                f"({mapping.CN}=*{value}*)",
            )
        )
    return per_word[0] if len(per_word) == 1 else "(&" + "".join(per_word) + ")"


def _criteria_filters(query: PreparedQuery) -> list[str]:
    filters: list[str] = []
    if query.name is not None:
        filters.append(_name_filter(query.name))
    for field, words, code_attribute in (
        (PROFESSION, query.profession, mapping.PROFESSION_CODE),
        (SPECIALTY, query.specialty, mapping.SPECIALTY_CODE),
    ):
        if words is not None:
            code = f"({code_attribute}={_escape(words.whole)})"
            filters.append(_any(code, _keys_filter(field, words)))
    if query.city is not None:
        stock = f"({mapping.CITY}={_escape(query.city.whole)}*)"
        filters.append(_any(_keys_filter(CITY, query.city), stock))
    if query.region is not None:
        stock = f"({mapping.REGION}={_escape(query.region.whole)}*)"
        filters.append(_any(_keys_filter(REGION, query.region), stock))
    if query.department is not None:
        code = f"({mapping.DEPARTMENT}={_escape(query.department.whole)})"
        filters.append(_any(code, _keys_filter(DEPARTMENT, query.department)))
    if query.postcode is not None:
        filters.append(f"({mapping.POSTAL_CODE}={_escape(query.postcode)}*)")
    if query.national_ids:
        filters.append(_any(*(f"({mapping.NATIONAL_ID}={_escape(i)})" for i in query.national_ids)))
    return filters


def entries_filter(attributes: AnnuaireAttributes) -> str:
    """What counts as an annuaire entry in a directory: inetOrgPerson or anything with
    a mail attribute (so the admin and OU entries are never results)."""
    return f"(|(objectClass=inetOrgPerson)({attributes.mail}=*))"


def ldap_filter(query: PreparedQuery, attributes: AnnuaireAttributes) -> str:
    """An RFC 4515 filter that selects at least every entry ``matches`` accepts."""
    return "(&" + entries_filter(attributes) + "".join(_criteria_filters(query)) + ")"


# ------------------------------------------------------------------ the search
def check_page(page: int, page_size: int) -> None:
    if page < 1:
        raise SearchError("page numbers start at 1")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise SearchError(f"page size must be between 1 and {MAX_PAGE_SIZE}")


async def search(
    backend: Searchable,
    query: SearchQuery,
    *,
    page: int = 1,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> SearchPage:
    """Run ``query`` on ``backend``; one ranked page. ``DirectoryUnavailable`` passes
    through (the caller must not show "nothing found" when the directory is down)."""
    check_page(page, page_size)
    prepared = prepare(query)
    if prepared is None:
        return SearchPage((), 0, page, page_size)
    candidates = await backend.search(prepared, max_candidates)
    ranked = rank([e for e in candidates.entries if matches(e, prepared)], prepared)
    start = (page - 1) * page_size
    return SearchPage(
        tuple(ranked[start : start + page_size]),
        len(ranked),
        page,
        page_size,
        candidates.truncated,
    )
