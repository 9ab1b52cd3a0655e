"""The recipient's address block for a French DL window envelope: sans-IO.

Role: part of the pure half of the postal fallback (issue 6, item 5). The page geometry
of the letter (``Rect``, the A4 page and its folds, the envelope window ``DL_WINDOW``
and the printed frame ``ADDRESS_AREA``) and ``format_postal_address``, which turns the
recipient's annuaire ``Entry`` into the lines that show in the window;
``gateway.relay.letter`` draws them. ``one_line`` (whitespace runs to one space) is
reused to clean the message's labels. Of the other postal modules this one imports only
``gateway.relay.postal_errors``.

Envelope geometry (an assumption, documented in docs/postal.md): a DL envelope is
110 x 220 mm; its window is taken as 100 x 45 mm, 20 mm from the right edge and 15 mm
from the bottom (the usual French "fenêtre à droite" stock), i.e. x 100-200 mm and
y 50-95 mm of the top third of an A4 sheet folded in three (99 mm panels). The address
block is printed at x = 110 mm, y = 55 mm, 85 x 33 mm, the frame that a French mailing
provider gives for window envelopes ("cadre de 3,3 cm de haut sur 8,5 cm de large ...
à 5,5 cm du bord supérieur ... et à 11 cm du bord gauche",
https://edics.fr/rediger-vos-adresses-les-bonnes-pratiques/): 5-10 mm inside the window
on every side, so the sheet may slide in the envelope.

Address (AFNOR NF Z10-011 as summarised by La Poste,
http://www.laposte.fr/sna/article.php3?id_article=148): at most 6 lines of at most 38
characters, left-aligned, no blank line; the last line is the postcode and the city in
capitals. Here: line 1 the entry's display name, then the organisation when there is
room (it is dropped first when the entry has too many lines), then the directory's
address lines, then ``POSTCODE CITY`` with accents and punctuation removed (La Poste
asks for unaccented capitals there). Lines 1-5 keep their accents ("Hélène Lefèvre").
A line longer than 38 characters is noted in ``AddressBlock.warnings`` (the letter
prints it in a smaller font, down to 7 pt, and copies the warnings to
``Letter.manifest["address_warnings"]``); an entry without address lines, postcode or
city, or with more than 6 lines, raises ``NoPostalAddress`` (the caller then sends the
failure DSN). Written by hand: these address rules (no library applies them).

Trust level: runs in the secure agent; no I/O, no logging.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from annuaire.model import Entry
from gateway.relay.postal_errors import NoPostalAddress

MAX_ADDRESS_LINES: Final = 6  # NF Z10-011
MAX_ADDRESS_LINE_LENGTH: Final = 38  # NF Z10-011

# --- geometry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rect:
    """A rectangle on the A4 page in millimetres, from the top-left corner."""

    x: float
    y: float
    width: float
    height: float

    def contains(self, other: Rect) -> bool:
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.x + other.width <= self.x + self.width
            and other.y + other.height <= self.y + self.height
        )


PAGE_WIDTH: Final = 210.0
PAGE_HEIGHT: Final = 297.0
FOLD_HEIGHT: Final = 99.0  # A4 folded in three for a DL envelope
DL_WINDOW: Final = Rect(x=100.0, y=50.0, width=100.0, height=45.0)
ADDRESS_AREA: Final = Rect(x=110.0, y=55.0, width=85.0, height=33.0)


# --- the address block (NF Z10-011) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressBlock:
    lines: tuple[str, ...]
    warnings: tuple[str, ...]


SPACES = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[^0-9A-Z ]+")
_FRENCH_POSTCODE = re.compile(r"[0-9]{5}")


def one_line(text: str) -> str:
    return SPACES.sub(" ", text).strip()


def _routing_line(postal_code: str, city: str) -> str:
    """``42000 SAINT ETIENNE``: capitals, no accent, no punctuation (La Poste)."""
    upper = city.upper().replace("Œ", "OE").replace("Æ", "AE")
    decomposed = unicodedata.normalize("NFKD", upper)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return one_line(f"{one_line(postal_code)} {_NOT_ALNUM.sub(' ', bare)}")


def format_postal_address(entry: Entry) -> AddressBlock:
    """The recipient's address lines, or ``NoPostalAddress``."""
    street = tuple(line for line in map(one_line, entry.postal_address) if line)
    code = one_line(entry.postal_code or "")
    city = one_line(entry.city or "")
    if not street or not code or not city:
        raise NoPostalAddress("the annuaire has no complete postal address for this recipient")
    head = [one_line(entry.display_name)]
    organisation = one_line(entry.organisation or "")
    if organisation and organisation.casefold() != head[0].casefold():
        head.append(organisation)
    tail = [*street, _routing_line(code, city)]
    if len(head) + len(tail) > MAX_ADDRESS_LINES:
        head = head[:1]
    if len(head) + len(tail) > MAX_ADDRESS_LINES:
        raise NoPostalAddress(f"the postal address has more than {MAX_ADDRESS_LINES} lines")
    lines = (*head, *tail)
    warnings = [
        f"line {number} longer than {MAX_ADDRESS_LINE_LENGTH} characters"
        for number, line in enumerate(lines, start=1)
        if len(line) > MAX_ADDRESS_LINE_LENGTH
    ]
    if not _FRENCH_POSTCODE.fullmatch(code):
        warnings.append("postcode is not 5 digits")
    return AddressBlock(lines=lines, warnings=tuple(warnings))
