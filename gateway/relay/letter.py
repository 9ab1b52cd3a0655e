"""The postal fallback letter: a clear MIME message and an annuaire entry -> one PDF.

Role: the pure half of the postal fallback (issue 6, item 5). When a route says
``fallback = "postal"`` and a recipient has no valid encryption certificate, the secure
agent hands the CLEAR message (before S/MIME) and the recipient's annuaire ``Entry`` to
``render_letter``, which returns the PDF bytes and a manifest. ``gateway.relay.postal``
writes both to ``[postal] outbox``. No I/O here except reading the font files.

What the letter holds (A4, folded in three for a French DL window envelope):
- the sender block (top left), the recipient's address block where the window shows
  it, the date, ``Objet :`` with the REAL Subject (the letter travels in a sealed
  envelope, so the Subject that S/MIME would have protected is printed, never logged
  and never put in the manifest or a file name), a short notice saying why the message
  came by post, the body text (``text/plain``, else ``text/html`` reduced to text),
  then the list of attachments;
- every readable, unencrypted PDF attachment appended after the letter (pypdf); every
  other attachment (and a PDF that cannot be appended) is listed by file name only.

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
A line longer than 38 characters is printed in a smaller font (down to 7 pt) and noted
in ``Letter.manifest["address_warnings"]``; an entry without address lines, postcode or
city, or with more than 6 lines, raises ``NoPostalAddress`` (the caller then sends the
failure DSN).

Bounds (hostile input): the MIME tree is at most 16 levels deep and 256 parts; the body
at most 500,000 characters and the letter at most 40 pages (``LetterTooLong``, checked
at each page break, so a huge body costs at most 40 pages of work); appended PDFs at most
200 pages in all (a PDF past that is listed, not appended). A multipart message whose
boundaries are broken or missing raises ``UnreadableMessage``. Third-party parsers
(pypdf) run on attachment bytes: any exception there makes the PDF "listed, not
appended", never a crash.

Fonts: DejaVu Sans (Debian ``fonts-dejavu-core``) is embedded, subset, so accents and
most scripts render; a character the font lacks is printed as ``?``. Missing font files
raise ``PostalUnavailable`` (temporary: the operator installs the package, the queue
retries). Libraries: fpdf2 (LGPL-3.0, pure Python) draws the letter, pypdf (BSD)
appends PDFs; the stdlib ``email`` package parses MIME. Written by hand: the HTML to
text reduction (stdlib ``html.parser``, a dozen lines; no dependency needed) and the
address rules above.

Trust level: runs in the secure agent (sees clear text); never logs the Subject, the
body or attachment names.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import hashlib
import io
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage, MIMEPart
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final, Literal

from fpdf import FPDF
from fpdf.fonts import TTFFont
from pypdf import PdfReader, PdfWriter

from annuaire.model import Entry

Language = Literal["fr", "en"]

MAX_ADDRESS_LINES: Final = 6  # NF Z10-011
MAX_ADDRESS_LINE_LENGTH: Final = 38  # NF Z10-011
MAX_MIME_DEPTH: Final = 16
MAX_MIME_PARTS: Final = 256
MAX_BODY_CHARACTERS: Final = 500_000
MAX_LETTER_PAGES: Final = 40
MAX_APPENDED_PAGES: Final = 200
MAX_SUBJECT_CHARACTERS: Final = 500
MAX_NAME_CHARACTERS: Final = 120

FONT_DIRECTORY: Final = Path("/usr/share/fonts/truetype/dejavu")
_REGULAR_FONT: Final = "DejaVuSans.ttf"
_BOLD_FONT: Final = "DejaVuSans-Bold.ttf"
_FAMILY: Final = "DejaVu"

MANIFEST_FORMAT: Final = "missive-postal-letter"
MANIFEST_VERSION: Final = 1


# --- errors -----------------------------------------------------------------------------


class PostalError(Exception):
    """The letter cannot be made. ``permanent`` errors end in a failure DSN that says
    ``reason``; the others are retried (the message stays queued)."""

    permanent = True

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NoPostalAddress(PostalError):
    """The annuaire entry has no usable postal address."""


class UnreadableMessage(PostalError):
    """The message is not MIME that can be turned into a letter."""


class LetterTooLong(PostalError):
    """The body would need more than ``MAX_LETTER_PAGES`` pages."""


class PostalUnavailable(PostalError):
    """The gateway cannot make letters now (font missing, outbox unwritable)."""

    permanent = False


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
_MARGIN: Final = 20.0
_BODY_TOP: Final = 104.0  # below the first fold, so nothing of the body shows in the window


# --- the address block (NF Z10-011) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressBlock:
    lines: tuple[str, ...]
    warnings: tuple[str, ...]


_SPACES = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[^0-9A-Z ]+")
_FRENCH_POSTCODE = re.compile(r"[0-9]{5}")


def _one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _routing_line(postal_code: str, city: str) -> str:
    """``42000 SAINT ETIENNE``: capitals, no accent, no punctuation (La Poste)."""
    upper = city.upper().replace("Œ", "OE").replace("Æ", "AE")
    decomposed = unicodedata.normalize("NFKD", upper)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _one_line(f"{_one_line(postal_code)} {_NOT_ALNUM.sub(' ', bare)}")


def format_postal_address(entry: Entry) -> AddressBlock:
    """The recipient's address lines, or ``NoPostalAddress``."""
    street = tuple(line for line in map(_one_line, entry.postal_address) if line)
    code = _one_line(entry.postal_code or "")
    city = _one_line(entry.city or "")
    if not street or not code or not city:
        raise NoPostalAddress("the annuaire has no complete postal address for this recipient")
    head = [_one_line(entry.display_name)]
    organisation = _one_line(entry.organisation or "")
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


# --- reading the MIME message -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str  # "" when the part has no file name
    content_type: str
    pdf: bytes | None  # the decoded bytes when it claims to be a PDF, else None


@dataclass(frozen=True, slots=True)
class LetterContent:
    subject: str
    body: str
    attachments: tuple[Attachment, ...]


_FATAL_DEFECTS: Final = (
    email.errors.NoBoundaryInMultipartDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clean_text(text: str) -> str:
    """Newlines normalised, tabs expanded, other control characters removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    return _CONTROL.sub("", text)


def _clean_label(text: str, limit: int) -> str:
    return _one_line(_CONTROL.sub(" ", text))[:limit]


class _HtmlText(HTMLParser):
    """Visible text of an HTML body: block elements become line breaks."""

    _BREAKS = frozenset("br p div li tr h1 h2 h3 h4 h5 h6 blockquote pre table ul ol hr".split())
    _HIDDEN = frozenset(("script", "style", "head", "title"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        elif tag in self._BREAKS:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag in self._BREAKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.chunks.append(_SPACES.sub(" ", data))


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    lines = (line.strip() for line in "".join(parser.chunks).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _leaves(part: MIMEPart, depth: int, in_alternative: bool) -> Iterator[tuple[Any, bool]]:
    """Every non-multipart part with whether its parent is multipart/alternative;
    message/rfc822 is a leaf (listed as an attachment, not opened)."""
    if depth > MAX_MIME_DEPTH:
        raise UnreadableMessage(f"MIME nesting deeper than {MAX_MIME_DEPTH} levels")
    if part.get_content_maintype() != "multipart":
        yield part, in_alternative
        return
    alternative = part.get_content_subtype() == "alternative"
    for child in part.iter_parts():
        yield from _leaves(child, depth + 1, alternative)


def _text_of(part: MIMEPart) -> str:
    content = part.get_content()
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html":
        return html_to_text(content)
    return content


def _attachment(part: MIMEPart) -> Attachment:
    name = _clean_label(part.get_filename() or "", MAX_NAME_CHARACTERS)
    content_type = part.get_content_type()
    claims_pdf = content_type == "application/pdf" or (
        content_type == "application/octet-stream" and name.lower().endswith(".pdf")
    )
    payload = part.get_payload(decode=True) if claims_pdf else None
    return Attachment(
        name=name,
        content_type=content_type,
        pdf=payload if isinstance(payload, bytes) else None,
    )


def _parse(message: bytes) -> EmailMessage:
    if not message.strip():
        raise UnreadableMessage("the message is empty")
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)  # what policy.default makes
    return parsed


def read_message(message: bytes) -> LetterContent:
    """Subject, body text and attachments of a clear MIME message."""
    try:
        return _read_message(_parse(message))
    except PostalError:
        raise
    except (LookupError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise UnreadableMessage(f"malformed MIME message ({type(error).__name__})") from error


def _read_message(parsed: EmailMessage) -> LetterContent:
    body_part = parsed.get_body(preferencelist=("plain", "html"))
    texts = [_text_of(body_part)] if body_part is not None else []
    attachments: list[Attachment] = []
    for count, (leaf, in_alternative) in enumerate(_leaves(parsed, 0, False), start=1):
        if count > MAX_MIME_PARTS:
            raise UnreadableMessage(f"more than {MAX_MIME_PARTS} MIME parts")
        if any(isinstance(defect, _FATAL_DEFECTS) for defect in leaf.defects):
            raise UnreadableMessage("malformed MIME message (broken multipart boundaries)")
        if leaf is body_part:
            continue
        is_inline_text = (
            leaf.get_content_maintype() == "text"
            and leaf.get_filename() is None
            and leaf.get_content_disposition() != "attachment"
        )
        if is_inline_text:
            if not in_alternative:  # an alternative of the body says the same thing
                texts.append(_text_of(leaf))
            continue
        attachments.append(_attachment(leaf))
    if any(isinstance(defect, _FATAL_DEFECTS) for defect in parsed.defects):
        raise UnreadableMessage("malformed MIME message (broken multipart boundaries)")
    body = _clean_text("\n\n".join(text.strip("\n") for text in texts if text.strip()))
    if len(body) > MAX_BODY_CHARACTERS:
        raise LetterTooLong(f"the body is longer than {MAX_BODY_CHARACTERS} characters")
    subject = _clean_label(str(parsed.get("subject", "")), MAX_SUBJECT_CHARACTERS)
    return LetterContent(subject=subject, body=body, attachments=tuple(attachments))


# --- appended PDFs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enclosure:
    """An attachment as the letter lists it: appended (with its pages) or only named."""

    attachment: Attachment
    reader: PdfReader | None
    pages: int
    note: str  # key of _TEXTS["notes"]: "appended", "not-pdf", "unreadable", ...


def _open_pdf(data: bytes) -> tuple[PdfReader | None, int, str]:
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            return None, 0, "encrypted"
        return reader, len(reader.pages), "appended"
    # pypdf parses attacker-supplied bytes and can fail in many ways; any failure only
    # means "list it, do not append it"
    except Exception:  # noqa: BLE001
        return None, 0, "unreadable"


def plan_enclosures(attachments: tuple[Attachment, ...]) -> tuple[Enclosure, ...]:
    """Which attachments are appended (readable PDFs within the page budget)."""
    budget = MAX_APPENDED_PAGES
    enclosures: list[Enclosure] = []
    for attachment in attachments:
        if attachment.pdf is None:
            enclosures.append(Enclosure(attachment, None, 0, "not-pdf"))
            continue
        reader, pages, note = _open_pdf(attachment.pdf)
        if reader is not None and (pages == 0 or pages > budget):
            reader, note = None, "too-long" if pages else "unreadable"
        if reader is not None:
            budget -= pages
        enclosures.append(Enclosure(attachment, reader, pages if reader else 0, note))
    return tuple(enclosures)


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
    """10 pt, or less (down to 7 pt) so the longest line fits the window frame."""
    size = 10.0
    while size > 7.0:
        pdf.set_font(_FAMILY, size=size)
        if max(pdf.get_string_width(line) for line in lines) <= ADDRESS_AREA.width:
            break
        size -= 0.5
    return size


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


def _draw_text(pdf: _LetterPdf, content: LetterContent, texts: dict[str, str]) -> None:
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
        _draw_text(pdf, content, texts)
        _draw_enclosures(pdf, enclosures, texts)
        return bytes(pdf.output()), pdf.page_no()
    finally:
        _close_fonts(pdf)


def _close_fonts(pdf: FPDF) -> None:
    """fpdf2 opens each TTF lazily through fontTools and never closes it."""
    for font in pdf.fonts.values():
        if isinstance(font, TTFFont):
            font.ttfont.close()


def _append_pdfs(letter: bytes, enclosures: tuple[Enclosure, ...]) -> bytes:
    readers = [e.reader for e in enclosures if e.reader is not None]
    if not readers:
        return letter
    writer = PdfWriter(clone_from=io.BytesIO(letter))
    for reader in readers:
        writer.append(reader)
    output = io.BytesIO()
    writer.write(output)
    return output.getvalue()


# --- the entry point --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Letter:
    """The PDF to print and its manifest (no Subject, body or attachment name in it)."""

    pdf: bytes
    manifest: dict[str, Any]
    address_area: Rect = ADDRESS_AREA


def render_letter(
    message: bytes,
    recipient: Entry,
    sender: str,
    *,
    now: datetime,
    language: Language = "fr",
    font_directory: Path = FONT_DIRECTORY,
) -> Letter:
    """The letter for ``recipient`` carrying the clear ``message`` from ``sender``.

    Raises ``NoPostalAddress``, ``UnreadableMessage``, ``LetterTooLong`` (permanent) or
    ``PostalUnavailable`` (temporary), all ``PostalError``.
    """
    if language not in _TEXTS:
        raise ValueError(f"language must be one of {', '.join(_TEXTS)}")
    address = format_postal_address(recipient)
    content = read_message(message)
    enclosures = plan_enclosures(content.attachments)
    letter, letter_pages = _draw_letter(
        content,
        address,
        enclosures,
        _clean_label(sender, 254),
        now,
        language,
        default_fonts(font_directory),
    )
    pdf = _append_pdfs(letter, enclosures)
    appended = sum(e.pages for e in enclosures)
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": now.isoformat(),
        "language": language,
        "sender": sender,
        "recipient": {"key": recipient.key, "name": recipient.display_name},
        "address_lines": list(address.lines),
        "address_warnings": list(address.warnings),
        "envelope": "DL 110x220 mm, window right",
        "pages": {"letter": letter_pages, "appended": appended, "total": letter_pages + appended},
        "attachments": {
            "appended": sum(1 for e in enclosures if e.reader is not None),
            "listed_only": sum(1 for e in enclosures if e.reader is None),
        },
        "pdf_sha256": hashlib.sha256(pdf).hexdigest(),
    }
    return Letter(pdf=pdf, manifest=manifest)
