"""The message's attachments as the letter encloses them: appended PDFs or names only.

Role: part of the pure half of the postal fallback (issue 6, item 5).
``plan_enclosures`` decides for each ``Attachment`` of the message: every readable,
unencrypted PDF attachment is appended after the letter (pypdf); every other attachment
(and a PDF that cannot be appended) is listed by file name only. ``append_pdfs`` puts
the rendered letter and the appended PDFs into one document. Of the other postal
modules this one imports only ``gateway.relay.letter_content`` (``Attachment``).

Bounds (hostile input): appended PDFs at most 200 pages in all (a PDF past that is
listed, not appended). The work of counting a PDF's pages is bounded too: pypdf visits
at most ``MAX_PAGE_TREE_ENTRIES`` page tree nodes (its ``page_tree_maximum_entries``,
set for that call only); a tree past it is "too long". Without that bound, a 4 KB
PDF whose page tree names one node hundreds of times expands to 90,000 pages (60 MB,
about a second of CPU) before it is found too long. Third-party parsers (pypdf) run
on attachment bytes: any exception there makes the PDF "listed, not appended", never
a crash. That covers appending: each PDF to append is first copied once through pypdf
(append to an empty document, write, read back), so a PDF that pypdf opens but cannot
append (annotations or article threads that are numbers, ...) is listed at planning
time instead of raising in ``append_pdfs`` after the letter said "appended"; the copy
is what gets appended.

Active content (hostile input): the letter PDF is opened by a print operator or a
mailing provider's pipeline, so the copy keeps what prints and drops what acts:
annotations that act or carry files (``_ACTIVE_ANNOTATIONS``: links, file
attachments, media, 3D), every action (``/A``, ``/AA``: JavaScript, Launch, ...) of
pages, annotations and form fields, the outline (its items carry actions), and the
catalog's ``/OpenAction``, ``/AA``, ``/Names`` (document JavaScript, embedded files)
and XFA. Form fields keep their appearance, so a filled-in form prints as filled.
Written by hand over pypdf's objects (pypdf removes annotations by subtype, nothing
more).

Libraries: pypdf (BSD) reads and appends PDFs.

Trust level: runs in the secure agent (sees clear attachments); no I/O; never logs
attachment names.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

from pypdf import PdfReader, PdfWriter, apply_configuration
from pypdf.errors import LimitReachedError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

from gateway.relay.letter_content import Attachment

MAX_APPENDED_PAGES: Final = 200
MAX_PAGE_TREE_ENTRIES: Final = 4 * MAX_APPENDED_PAGES  # pypdf's default: 100,000

# what acts when the letter is opened, not what prints (ISO 32000-1 §12.5.6)
_ACTIVE_ANNOTATIONS: Final = (
    "/Link",
    "/FileAttachment",
    "/Sound",
    "/Movie",
    "/Screen",
    "/RichMedia",
    "/3D",
)
_ACTION_KEYS: Final = ("/A", "/AA")  # ISO 32000-1 §12.6.2, §12.6.3

# --- appended PDFs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enclosure:
    """An attachment as the letter lists it: appended (with its pages) or only named."""

    attachment: Attachment
    reader: PdfReader | None
    pages: int
    note: str  # key of the letter texts (letter_drawing._TEXTS[language]): "appended", ...


def _open_pdf(data: bytes) -> tuple[PdfReader | None, int, str]:
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            return None, 0, "encrypted"
        pages = _page_count(reader)
        if pages is None:
            return None, 0, "too-long"
        return reader, pages, "appended"
    # pypdf parses attacker-supplied bytes and can fail in many ways; any failure only
    # means "list it, do not append it"
    except Exception:  # noqa: BLE001
        return None, 0, "unreadable"


def _page_count(reader: PdfReader) -> int | None:
    """The number of pages, or None past ``MAX_PAGE_TREE_ENTRIES`` page tree nodes."""
    with apply_configuration(page_tree_maximum_entries=MAX_PAGE_TREE_ENTRIES):
        try:
            return len(reader.pages)  # pypdf walks the page tree once, here
        except LimitReachedError:
            return None


def _copy_of(reader: PdfReader) -> PdfReader | None:
    """``reader``'s pages appended to an empty document, made inert, written and read
    back; None when pypdf cannot do that (module docstring: then it is listed)."""
    try:
        writer = PdfWriter()
        writer.append(reader, import_outline=False)
        _make_inert(writer)
        copy = io.BytesIO()
        writer.write(copy)
        return PdfReader(copy, strict=False)
    except Exception:  # noqa: BLE001 - see _open_pdf
        return None


def _make_inert(writer: PdfWriter) -> None:
    """Remove what acts, keep what prints (module docstring)."""
    writer.remove_annotations(subtypes=_ACTIVE_ANNOTATIONS)
    root = writer.root_object
    for key in ("/OpenAction", "/AA", "/Names"):
        root.pop(NameObject(key), None)
    forms: list[object] = []
    for page in writer.pages:
        page.pop(NameObject("/AA"), None)
        forms.append(page.get("/Annots"))
    acro_form = root.get("/AcroForm")
    acro_form = acro_form.get_object() if acro_form is not None else None
    if isinstance(acro_form, DictionaryObject):
        acro_form.pop(NameObject("/XFA"), None)
        forms.append(acro_form.get("/Fields"))
    _drop_actions(forms)


def _drop_actions(roots: list[object]) -> None:
    """``/A`` and ``/AA`` removed from every dictionary reachable from ``roots`` through
    arrays, ``/Kids`` and ``/Parent`` (annotations and the form field tree); each
    indirect object is visited once, so a cycle ends."""
    seen: set[int] = set()
    pending = list(roots)
    while pending:
        node = pending.pop()
        if isinstance(node, IndirectObject):
            if node.idnum in seen:
                continue
            seen.add(node.idnum)
            node = node.get_object()
        if isinstance(node, ArrayObject):
            pending.extend(node)
        elif isinstance(node, DictionaryObject):
            for key in _ACTION_KEYS:
                node.pop(NameObject(key), None)
            pending.extend(node.raw_get(key) for key in ("/Kids", "/Parent") if key in node)


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
            reader = _copy_of(reader)
            note = "appended" if reader is not None else "unreadable"
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
