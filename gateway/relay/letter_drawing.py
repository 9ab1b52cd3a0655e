"""The postal fallback letter's pages: its texts, its fonts and its drawing (fpdf2).

Role: ``gateway.relay.letter.render_letters`` (the entry point) reads the message, plans
the enclosures and finds the fonts once per message, then calls ``_draw_letter`` once per
recipient: it draws the letter (A4, one address block, the body, the list of
attachments) and returns the PDF bytes and its page count; ``gateway.relay.letter``
appends the enclosures and writes the manifest. Split from ``gateway.relay.letter``
(session 7, pure move). No I/O here except reading the font files; it imports neither
``gateway.relay.letter`` nor the sandbox.

What the letter holds (A4, folded in three for a French DL window envelope):
- the sender block (top left), the recipient's address block where the window shows
  it, the date, ``Objet :`` with the REAL Subject (the letter travels in a sealed
  envelope, so the Subject that S/MIME would have protected is printed, never logged
  and never put in the manifest or a file name), a short notice saying why the message
  came by post, the body text (``text/plain``, else ``text/html`` reduced to text),
  then the list of attachments;
- every readable, unencrypted PDF attachment appended after the letter (pypdf); every
  other attachment (and a PDF that cannot be appended) is listed by file name only.

Text read with another charset than the one declared, or with characters that could
not be read (``LetterContent.decodings`` and ``subject_replaced``, decided in
``gateway.relay.letter_content``): a bold warning above the body says which charset was
declared, how the text was read and how many characters are shown as U+FFFD, and asks
the reader to check with the sender; ``Letter.manifest["text_decoding"]`` (one object
per warning: ``declared``, ``read_as``, ``replaced``) and
``manifest["subject_replaced"]`` (a count) say the same to the operator. The letter
never carries altered medical text without that mark.

The address block is printed in the ``ADDRESS_AREA`` frame (geometry and address rules:
``gateway.relay.postal_address`` and docs/postal.md). A line longer than 38 characters
is printed in a smaller font (down to 7 pt) and noted in
``Letter.manifest["address_warnings"]``.

Bounds (hostile input): the letter at most 40 pages (``LetterTooLong``, checked at each
page break, so a huge body costs at most 40 pages of work); the bounds on the message
and on the appended PDFs are kept by the modules that read them.

Fonts: DejaVu Sans (Debian ``fonts-dejavu-core``) is embedded, subset, so accents and
most scripts render; a character the font lacks is printed as ``?``. Missing font files
raise ``PostalUnavailable`` (temporary: the operator installs the package, the queue
retries). Libraries: fpdf2 (LGPL-3.0, pure Python) draws the letter (pypdf and the
stdlib ``email`` package work in the modules above).

Security notes: the Subject is printed (the letter travels in a sealed envelope) but
never put in the PDF's metadata (its title is ``Missive``: file managers show it);
nothing here logs.

Trust level: runs in the secure agent (sees clear text); never logs the Subject, the
body or attachment names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from fpdf import FPDF
from fpdf.fonts import TTFFont

from gateway.relay.enclosures import MAX_APPENDED_PAGES, Enclosure
from gateway.relay.letter_content import LetterContent, TextDecoding
from gateway.relay.postal_address import (
    ADDRESS_AREA,
    FOLD_HEIGHT,
    MAX_ADDRESS_LINES,
    AddressBlock,
)
from gateway.relay.postal_errors import (
    LetterTooLong,
    NoPostalAddress,
    PostalUnavailable,
)

Language = Literal["fr", "en"]

MAX_LETTER_PAGES: Final = 40

FONT_DIRECTORY: Final = Path("/usr/share/fonts/truetype/dejavu")
_REGULAR_FONT: Final = "DejaVuSans.ttf"
_BOLD_FONT: Final = "DejaVuSans-Bold.ttf"
_FAMILY: Final = "DejaVu"

_MARGIN: Final = 20.0
_BODY_TOP: Final = 104.0  # below the first fold, so nothing of the body shows in the window

# --- texts ------------------------------------------------------------------------------

_MONTHS_FR: Final = (
    "janvier février mars avril mai juin juillet août septembre octobre novembre décembre"
).split()

_TEXTS: Final[dict[str, dict[str, str]]] = {
    "fr": {
        "gateway": "Missive — passerelle de messagerie sécurisée de santé",
        "from": "Expéditeur : {sender}",
        "unknown_sender": "(expéditeur non indiqué)",
        "date": "Le {day} {month} {year}",
        "subject": "Objet : ",
        "notice": (
            "Ce message électronique vous est remis par courrier postal : aucun "
            "certificat de chiffrement valide n'a été trouvé pour votre messagerie "
            "sécurisée, et il ne peut pas vous être envoyé en clair."
        ),
        "attachments": "Pièces jointes",
        "unnamed": "(sans nom, {type})",
        "appended": "jointe à la suite de ce courrier ({pages} page(s))",
        "not-pdf": "non imprimable ({type}) : non jointe, à demander à l'expéditeur",
        "unreadable": "PDF illisible : non joint, à demander à l'expéditeur",
        "encrypted": "PDF protégé par mot de passe : non joint, à demander à l'expéditeur",
        "too-long": "PDF trop long ({limit} pages au plus) : non joint",
        "page": "Page {number}",
        "warning": "Attention : ",
        "declared": (
            "une partie du texte ci-dessous déclarait le jeu de caractères « {declared} », "
            "inconnu ou inexact : elle a été lue en {read_as}. "
        ),
        "undeclared": (
            "une partie du texte ci-dessous ne déclarait pas son jeu de caractères : "
            "elle a été lue en {read_as}. "
        ),
        "replaced": "{count} caractère(s) illisible(s) y sont remplacés par « \ufffd ». ",
        "subject_replaced": (
            "l'objet contient {count} caractère(s) illisible(s), remplacés par « \ufffd ». "
        ),
        "check": "En cas de doute, vérifiez auprès de l'expéditeur.",
    },
    "en": {
        "gateway": "Missive — secure health mail gateway",
        "from": "Sender: {sender}",
        "unknown_sender": "(no sender given)",
        "date": "{day} {month} {year}",
        "subject": "Subject: ",
        "notice": (
            "This e-mail is delivered to you by post: no valid encryption certificate "
            "was found for your secure mailbox, and it cannot be sent to you in clear."
        ),
        "attachments": "Attachments",
        "unnamed": "(no name, {type})",
        "appended": "appended to this letter ({pages} page(s))",
        "not-pdf": "cannot be printed ({type}): not enclosed, ask the sender",
        "unreadable": "unreadable PDF: not enclosed, ask the sender",
        "encrypted": "password-protected PDF: not enclosed, ask the sender",
        "too-long": "PDF too long (at most {limit} pages): not enclosed",
        "page": "Page {number}",
        "warning": "Warning: ",
        "declared": (
            "part of the text below declared the character set “{declared}”, unknown "
            "or wrong: it was read as {read_as}. "
        ),
        "undeclared": (
            "part of the text below declared no character set: it was read as {read_as}. "
        ),
        "replaced": "{count} unreadable character(s) in it are shown as “\ufffd”. ",
        "subject_replaced": (
            "the subject holds {count} unreadable character(s), shown as “\ufffd”. "
        ),
        "check": "If in doubt, check with the sender.",
    },
}


def _date_text(now: datetime, language: Language) -> str:
    month = _MONTHS_FR[now.month - 1] if language == "fr" else now.strftime("%B")
    return _TEXTS[language]["date"].format(day=now.day, month=month, year=now.year)


def _enclosure_line(enclosure: Enclosure, texts: dict[str, str]) -> str:
    attachment = enclosure.attachment
    name = attachment.name or texts["unnamed"].format(type=attachment.content_type)
    note = texts[enclosure.note].format(
        pages=enclosure.pages, type=attachment.content_type, limit=MAX_APPENDED_PAGES
    )
    return f"• {name} — {note}"


def _decoding_warning(decoding: TextDecoding, texts: dict[str, str]) -> str:
    """One warning of the letter (module docstring): how a part was read."""
    said = ""
    if decoding.read_as != decoding.declared:
        key = "declared" if decoding.declared else "undeclared"
        said = texts[key].format(declared=decoding.declared, read_as=decoding.read_as)
    if decoding.replaced:
        said += texts["replaced"].format(count=decoding.replaced)
    return said


def decoding_warnings(content: LetterContent, language: Language) -> tuple[str, ...]:
    """The warnings the letter prints above the body (none when all was read as declared)."""
    texts = _TEXTS[language]
    said = [_decoding_warning(decoding, texts) for decoding in content.decodings]
    if content.subject_replaced:
        said.append(texts["subject_replaced"].format(count=content.subject_replaced))
    return tuple(texts["warning"] + line + texts["check"] for line in said if line)


# --- drawing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FontFiles:
    regular: Path
    bold: Path


def default_fonts(directory: Path = FONT_DIRECTORY) -> FontFiles:
    fonts = FontFiles(regular=directory / _REGULAR_FONT, bold=directory / _BOLD_FONT)
    missing = [str(path) for path in (fonts.regular, fonts.bold) if not path.is_file()]
    if missing:
        raise PostalUnavailable(
            f"font file(s) missing: {', '.join(missing)} (install fonts-dejavu-core)"
        )
    return fonts


class _LetterPdf(FPDF):
    """fpdf2 with a page limit and a page-number footer."""

    def __init__(self, page_label: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._page_label = page_label
        self.str_alias_nb_pages = ""  # a body containing "{nb}" must print as written

    @property
    def accept_page_break(self) -> bool:
        """fpdf2 reads this only when the next line overflows the page."""
        if self.page_no() >= MAX_LETTER_PAGES:
            raise LetterTooLong(f"the letter would be longer than {MAX_LETTER_PAGES} pages")
        return bool(self.auto_page_break)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(_FAMILY, size=8)
        self.cell(0, 5, self._page_label.format(number=self.page_no()), align="R")

    def printable(self, text: str) -> str:
        """``text`` with the characters the current font lacks replaced by ``?``."""
        font = self.current_font
        if not isinstance(font, TTFFont):
            return text
        cmap = font.cmap
        return "".join(c if c == "\n" or ord(c) in cmap else "?" for c in text)


def _address_font_size(pdf: _LetterPdf, lines: tuple[str, ...]) -> float:
    """10 pt, or less (down to 7 pt) so the longest line fits the window frame;
    ``NoPostalAddress`` when it does not fit even at 7 pt: a line the window (and the
    sheet) cuts would be posted to a wrong or partial address, so the sender gets the
    failure DSN instead."""
    size = 10.0
    while True:
        pdf.set_font(_FAMILY, size=size)
        widest = max(lines, key=pdf.get_string_width)
        if pdf.get_string_width(widest) <= ADDRESS_AREA.width:
            return size
        if size <= 7.0:
            raise NoPostalAddress(
                f"an address line of {len(widest)} characters does not fit the envelope window"
            )
        size -= 0.5


def _draw_head(
    pdf: _LetterPdf, sender: str, address: AddressBlock, texts: dict[str, str], date: str
) -> None:
    pdf.set_xy(_MARGIN, 15)
    pdf.set_font(_FAMILY, "B", 9)
    pdf.cell(0, 5, texts["gateway"], new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FAMILY, size=9)
    shown_sender = sender or texts["unknown_sender"]
    pdf.multi_cell(
        80,
        5,
        pdf.printable(texts["from"].format(sender=shown_sender)),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.set_font(_FAMILY, size=_address_font_size(pdf, address.lines))
    line_height = ADDRESS_AREA.height / MAX_ADDRESS_LINES
    for number, line in enumerate(address.lines):
        pdf.set_xy(ADDRESS_AREA.x, ADDRESS_AREA.y + number * line_height)
        pdf.cell(ADDRESS_AREA.width, line_height, pdf.printable(line))
    for fold in (FOLD_HEIGHT, 2 * FOLD_HEIGHT):  # folding marks in the left margin
        pdf.line(4, fold, 8, fold)
    pdf.set_font(_FAMILY, size=10)
    pdf.set_xy(_MARGIN, _BODY_TOP)
    pdf.cell(0, 5, date, align="R", new_x="LMARGIN", new_y="NEXT")


def _draw_warnings(pdf: _LetterPdf, warnings: tuple[str, ...]) -> None:
    if not warnings:
        return
    pdf.set_font(_FAMILY, "B", 9)
    for warning in warnings:
        pdf.multi_cell(0, 4.5, pdf.printable(warning), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.ln(2)


def _draw_text(
    pdf: _LetterPdf, content: LetterContent, texts: dict[str, str], warnings: tuple[str, ...]
) -> None:
    pdf.ln(4)
    pdf.set_font(_FAMILY, "B", 10)
    pdf.multi_cell(
        0, 5, pdf.printable(texts["subject"] + content.subject), new_x="LMARGIN", new_y="NEXT"
    )
    pdf.ln(3)
    pdf.set_font(_FAMILY, size=8.5)
    pdf.set_text_color(90)
    pdf.multi_cell(0, 4, texts["notice"], new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.ln(5)
    _draw_warnings(pdf, warnings)
    pdf.set_font(_FAMILY, size=10)
    if content.body:
        pdf.multi_cell(0, 5, pdf.printable(content.body), new_x="LMARGIN", new_y="NEXT")


def _draw_enclosures(
    pdf: _LetterPdf, enclosures: tuple[Enclosure, ...], texts: dict[str, str]
) -> None:
    if not enclosures:
        return
    pdf.ln(6)
    pdf.set_font(_FAMILY, "B", 10)
    pdf.cell(0, 5, texts["attachments"], new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(_FAMILY, size=10)
    for enclosure in enclosures:
        pdf.multi_cell(
            0, 5, pdf.printable(_enclosure_line(enclosure, texts)), new_x="LMARGIN", new_y="NEXT"
        )


def _draw_letter(
    content: LetterContent,
    address: AddressBlock,
    enclosures: tuple[Enclosure, ...],
    sender: str,
    now: datetime,
    language: Language,
    fonts: FontFiles,
) -> tuple[bytes, int]:
    texts = _TEXTS[language]
    pdf = _LetterPdf(texts["page"])
    pdf.add_font(_FAMILY, "", str(fonts.regular))
    pdf.add_font(_FAMILY, "B", str(fonts.bold))
    pdf.set_margins(_MARGIN, 15, _MARGIN)
    pdf.set_auto_page_break(True, margin=20)
    pdf.set_creation_date(now)
    pdf.set_title("Missive")  # never the Subject: PDF metadata shows in file managers
    pdf.add_page()
    try:
        _draw_head(pdf, sender, address, texts, _date_text(now, language))
        _draw_text(pdf, content, texts, decoding_warnings(content, language))
        _draw_enclosures(pdf, enclosures, texts)
        return bytes(pdf.output()), pdf.page_no()
    finally:
        _close_fonts(pdf)


def _close_fonts(pdf: FPDF) -> None:
    """fpdf2 opens each TTF lazily through fontTools and never closes it."""
    for font in pdf.fonts.values():
        if isinstance(font, TTFFont):
            font.ttfont.close()
