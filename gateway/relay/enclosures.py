"""The message's attachments as the letter encloses them: appended PDFs or names only.

Role: part of the pure half of the postal fallback (issue 6, item 5).
``plan_enclosures`` decides for each ``Attachment`` of the message: every readable,
unencrypted PDF attachment is appended after the letter (pypdf); every other attachment
(and a PDF that cannot be appended) is listed by file name only. ``append_pdfs`` puts
the rendered letter and the appended PDFs into one document. Of the other postal
modules this one imports only ``gateway.relay.letter_content`` (``Attachment``).

Bounds (hostile input): appended PDFs at most 200 pages in all (a PDF past that is
listed, not appended). Third-party parsers (pypdf) run on attachment bytes: any
exception there makes the PDF "listed, not appended", never a crash.

Libraries: pypdf (BSD) reads and appends PDFs.

Trust level: runs in the secure agent (sees clear attachments); no I/O; never logs
attachment names.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

from pypdf import PdfReader, PdfWriter

from gateway.relay.letter_content import Attachment

MAX_APPENDED_PAGES: Final = 200

# --- appended PDFs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enclosure:
    """An attachment as the letter lists it: appended (with its pages) or only named."""

    attachment: Attachment
    reader: PdfReader | None
    pages: int
    note: str  # key of the letter texts (letter._TEXTS[language]): "appended", "not-pdf", ...


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


def append_pdfs(letter: bytes, enclosures: tuple[Enclosure, ...]) -> bytes:
    readers = [e.reader for e in enclosures if e.reader is not None]
    if not readers:
        return letter
    writer = PdfWriter(clone_from=io.BytesIO(letter))
    for reader in readers:
        writer.append(reader)
    output = io.BytesIO()
    writer.write(output)
    return output.getvalue()
