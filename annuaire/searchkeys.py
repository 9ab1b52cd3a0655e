"""Text folding and the search keys that make name / place search accent-insensitive.

Role: pure functions. ``fold`` maps a name to the form searches compare (Unicode NFKD,
combining marks dropped, a few letters that do not decompose mapped by hand, case
folded, runs of spaces collapsed): ``"Hélène  LŒUVRE"`` -> ``"helene loeuvre"``.
``tokens`` cuts a folded text into words (on anything that is not a letter or a digit:
spaces, hyphens, apostrophes), so ``"Saint-Étienne"`` gives ``saint``, ``etienne``.

Search keys: LDAP's ``caseIgnoreMatch`` ignores case but not accents (OpenLDAP does not
strip them), so each entry written by the annuaire carries ``missiveSearchKey`` values
``<field>:<token>`` (``n:helene``, ``s:cardiologie``, ``c:saint``, ...). A prefix
search is then one indexed substring filter ``(missiveSearchKey=n:hel*)`` and behaves
the same in slapd and in the in-memory LDIF index, which uses the very same keys.
Fields: ``n`` name (display name, given name, surname), ``p`` profession label,
``s`` specialty (savoir-faire) label, ``c`` city, ``d`` department, ``r`` region.

Why by hand: no maintained library does accent folding for search (``unidecode`` is a
transliterator with a GPL licence and far more than we need); NFKD plus a ten-letter
table covers French names and places.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from annuaire.model import Entry

NAME: Final = "n"
PROFESSION: Final = "p"
SPECIALTY: Final = "s"
CITY: Final = "c"
DEPARTMENT: Final = "d"
REGION: Final = "r"

# letters NFKD leaves whole; ß and the ligatures' case are handled by casefold()
_NON_DECOMPOSING = str.maketrans(
    {
        "ø": "o",
        "Ø": "o",
        "ł": "l",
        "Ł": "l",
        "đ": "d",
        "Đ": "d",
        "æ": "ae",
        "Æ": "ae",
        "œ": "oe",
        "Œ": "oe",
        "ı": "i",
        "’": "'",
    }
)
_SPACES = re.compile(r"\s+")
_WORD_SEPARATORS = re.compile(r"[\W_]+")
MAX_KEY_TOKEN_LENGTH = 64  # longer words are cut: a key is an index value, not storage
_VALUE_KEYS_CACHE_SIZE = 16384  # bounded: about 5 MB at most, in each process


def fold(text: str) -> str:
    """Case- and accent-insensitive form of ``text`` (see the module docstring)."""
    if text.isascii():
        return _SPACES.sub(" ", text.lower()).strip()
    decomposed = unicodedata.normalize("NFKD", text.translate(_NON_DECOMPOSING))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", bare.casefold()).strip()


def tokens(text: str) -> list[str]:
    """The words of ``fold(text)``, in order, without empty ones."""
    return [word for word in _WORD_SEPARATORS.split(fold(text)) if word]


@functools.lru_cache(maxsize=_VALUE_KEYS_CACHE_SIZE)  # labels, places, names repeat a lot
def _value_keys(field: str, value: str) -> tuple[str, ...]:
    """``<field>:<token>`` for every word of one value, without duplicates, in order."""
    return tuple(dict.fromkeys(f"{field}:{word[:MAX_KEY_TOKEN_LENGTH]}" for word in tokens(value)))


def field_keys(field: str, values: Iterable[str | None]) -> list[str]:
    """``<field>:<token>`` for every word of every value, without duplicates."""
    keys: list[str] = []
    for value in values:
        if not value:
            continue
        for key in _value_keys(field, value):
            if key not in keys:
                keys.append(key)
    return keys


def search_keys(entry: Entry) -> list[str]:
    """Every search key of ``entry`` (the ``missiveSearchKey`` values)."""
    keys = field_keys(NAME, (entry.display_name, entry.given_name, entry.surname))
    for field, value in (
        (PROFESSION, entry.profession_label),
        (SPECIALTY, entry.specialty_label),
        (CITY, entry.city),
        (DEPARTMENT, entry.department),
        (REGION, entry.region),
    ):
        if value:  # one value per field: its cached keys are already without duplicates
            keys += _value_keys(field, value)
    return keys
