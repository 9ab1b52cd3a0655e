"""The postal fallback letter: a clear MIME message and an annuaire entry -> one PDF.

Role: the pure half of the postal fallback (issue 6, item 5). When a route says
``fallback = "postal"`` and a recipient has no valid encryption certificate, the secure
agent hands the CLEAR message (before S/MIME) and the annuaire ``Entry`` of each postal
recipient to ``render_letters``, which returns for each the PDF bytes and a manifest.
``gateway.relay.postal`` writes both to ``[postal] outbox``. No I/O here (the fonts are
read by ``gateway.relay.letter_drawing``). This module is the entry point
(``render_letters``, ``render_letter``) and builds each ``Letter`` and its manifest;
what it puts together comes from modules by concern, none of which imports this one:
``gateway.relay.letter_drawing`` (the letter's texts and pages drawn with fpdf2),
``gateway.relay.postal_address``
(envelope geometry, the NF Z10-011 address lines), ``gateway.relay.letter_content``
(the message read into Subject, body and attachments), ``gateway.relay.enclosures``
(which PDFs are appended, and appending them) and ``gateway.relay.postal_errors`` (the
``PostalError`` family).

One rendering per recipient (decision of session 6, H5-2): the letters of the postal
recipients of one message differ only in the address block (and in what the manifest
says of the recipient: key, name, address lines, the PDF's hash), yet each is drawn
whole. Drawing once and stamping each address was measured not worth it: a letter
costs about 0.1 s of CPU here (font parsing, line breaking, font subsetting, about a
third each), while stamping means a PDF merge that rewrites the whole document, the
appended stranger's PDFs included (so it must run in the sandbox child too), and a
font subset for the address glyphs anyway. What the letters of one message share is
done once (decision of session 7, H2): ``render_letters`` reads the message, plans the
enclosures (the stranger's PDFs parsed and copied by pypdf) and finds the fonts once,
then draws and appends per recipient, each with its own outcome (its ``Letter`` or its
``PostalError``); ``render_letter`` is its one-recipient case. The appended copies are
pypdf readers that each letter's writer only reads (a batch's letters are byte for
byte those ``render_letter`` makes one by one: tests/relay/test_postal_batch.py). The
sandbox child (``gateway.relay.letter_sandbox``, about 0.5 s of CPU to spawn) is paid
once per message, not per recipient.

Layout (session 7 split, pure move): the letter's texts (``_TEXTS``, ``Language``), its
warnings (``decoding_warnings``), the fonts (``FontFiles``, ``default_fonts``,
``FONT_DIRECTORY``), the page limit (``MAX_LETTER_PAGES``) and the drawing
(``_LetterPdf``, ``_draw_letter`` and its parts) moved to ``gateway.relay.letter_drawing``
with the paragraphs of this docstring that describe them (what the letter holds, the
charset warnings, the address block's font size, the page bound, the fonts);
``Language``, ``MAX_LETTER_PAGES``, ``FONT_DIRECTORY``, ``FontFiles``,
``default_fonts`` and ``decoding_warnings`` are still importable from here.

Bounds (hostile input): the letter at most ``MAX_LETTER_PAGES`` pages (``LetterTooLong``,
``gateway.relay.letter_drawing``); the bounds on the message and on the appended PDFs
are kept by the modules that read them.

Libraries: fpdf2 draws the letter (``gateway.relay.letter_drawing``), pypdf appends the
enclosures (``gateway.relay.enclosures``) and the stdlib ``email`` package reads the
message (``gateway.relay.letter_content``); here only ``hashlib`` (the manifest's
``pdf_sha256``).

Trust level: runs in the secure agent (sees clear text); never logs the Subject, the
body or attachment names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from annuaire.model import Entry
from gateway.relay.enclosures import Enclosure, append_pdfs, plan_enclosures
from gateway.relay.letter_content import LetterContent, clean_label, read_message
from gateway.relay.letter_drawing import (
    _TEXTS,
    FontFiles,
    _draw_letter,
    default_fonts,
)
from gateway.relay.letter_drawing import FONT_DIRECTORY as FONT_DIRECTORY  # re-export
from gateway.relay.letter_drawing import MAX_LETTER_PAGES as MAX_LETTER_PAGES  # re-export
from gateway.relay.letter_drawing import Language as Language  # re-export
from gateway.relay.letter_drawing import decoding_warnings as decoding_warnings  # re-export
from gateway.relay.postal_address import ADDRESS_AREA, AddressBlock, Rect, format_postal_address
from gateway.relay.postal_errors import PostalError

MANIFEST_FORMAT: Final = "missive-postal-letter"
MANIFEST_VERSION: Final = 1


# --- the entry point --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Letter:
    """The PDF to print and its manifest (no Subject, body or attachment name in it)."""

    pdf: bytes
    manifest: dict[str, Any]
    address_area: Rect = ADDRESS_AREA


@dataclass(frozen=True, slots=True)
class _Message:
    """What every letter of one message shares: read, planned and checked once."""

    content: LetterContent
    enclosures: tuple[Enclosure, ...]
    sender: str
    now: datetime
    language: Language
    fonts: FontFiles


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
    (outcome,) = render_letters(
        message, (recipient,), sender, now=now, language=language, font_directory=font_directory
    )
    if isinstance(outcome, PostalError):
        raise outcome
    return outcome


def render_letters(
    message: bytes,
    recipients: Sequence[Entry],
    sender: str,
    *,
    now: datetime,
    language: Language = "fr",
    font_directory: Path = FONT_DIRECTORY,
) -> list[Letter | PostalError]:
    """The letter of each of ``recipients``, in order; the message read once.

    Each recipient has its own outcome: its ``Letter`` or the ``PostalError`` that
    stopped it. A recipient's own address (``NoPostalAddress``, checked first, as
    ``render_letter`` always did) or letter (too long, an address line too wide) is
    that recipient's error; what stops every letter of the message (``UnreadableMessage``,
    a body past its bound, ``PostalUnavailable``) is the same error for each recipient
    whose address is usable. Any other exception (a bug) propagates.
    """
    if language not in _TEXTS:
        raise ValueError(f"language must be one of {', '.join(_TEXTS)}")
    addresses = [_address_or_error(recipient) for recipient in recipients]
    if all(isinstance(address, PostalError) for address in addresses):  # nothing to read for
        return [address for address in addresses if isinstance(address, PostalError)]
    try:
        content = read_message(message)
        fonts = default_fonts(font_directory)
    except PostalError as error:
        return [address if isinstance(address, PostalError) else error for address in addresses]
    shared = _Message(
        content,
        plan_enclosures(content.attachments),  # the stranger's PDFs parsed once
        sender,
        now,
        language,
        fonts,
    )
    return [
        address
        if isinstance(address, PostalError)
        else _letter_or_error(shared, recipient, address)
        for recipient, address in zip(recipients, addresses, strict=True)
    ]


def _address_or_error(recipient: Entry) -> AddressBlock | PostalError:
    try:
        return format_postal_address(recipient)
    except PostalError as error:
        return error


def _letter_or_error(
    shared: _Message, recipient: Entry, address: AddressBlock
) -> Letter | PostalError:
    try:
        return _letter(shared, recipient, address)
    except PostalError as error:
        return error


def _letter(shared: _Message, recipient: Entry, address: AddressBlock) -> Letter:
    content, enclosures, now = shared.content, shared.enclosures, shared.now
    letter, letter_pages = _draw_letter(
        content,
        address,
        enclosures,
        clean_label(shared.sender, 254),
        now,
        shared.language,
        shared.fonts,
    )
    pdf = append_pdfs(letter, enclosures)
    appended = sum(e.pages for e in enclosures)
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": now.isoformat(),
        "language": shared.language,
        "sender": shared.sender,
        "recipient": {"key": recipient.key, "name": recipient.display_name},
        "address_lines": list(address.lines),
        "address_warnings": list(address.warnings),
        "envelope": "DL 110x220 mm, window right",
        "pages": {"letter": letter_pages, "appended": appended, "total": letter_pages + appended},
        "attachments": {
            "appended": sum(1 for e in enclosures if e.reader is not None),
            "listed_only": sum(1 for e in enclosures if e.reader is None),
        },
        "text_decoding": [
            {"declared": d.declared, "read_as": d.read_as, "replaced": d.replaced}
            for d in content.decodings
        ],
        "subject_replaced": content.subject_replaced,
        "pdf_sha256": hashlib.sha256(pdf).hexdigest(),
    }
    return Letter(pdf=pdf, manifest=manifest)
