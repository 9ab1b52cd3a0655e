"""Postal fallback: letters into ``[postal] outbox`` and what the sender is told.

Role (issue 6, item 5): when a route says ``fallback = "postal"`` and a recipient has no
valid encryption certificate, the secure agent calls ``render_letter`` (pure, in
``gateway.relay.letter``: the clear message and the recipient's annuaire entry -> PDF +
manifest), then ``write_to_outbox``, then queues the DSN of ``gateway.relay.dsn`` with reason
``postal`` (RFC 3464 §2.3.3 action ``relayed``, status 2.0.0: the message left the mail
system, by post). A ``PostalError`` ends in a failure DSN when ``error.permanent``
(reason ``no-postal-address`` for ``NoPostalAddress``; the others, an unreadable or
too long message, say ``error.reason``); a temporary one (``PostalUnavailable``,
``OutboxError``) defers the recipient, to be retried. This module holds no DSN text:
the DSN builder has the French and English sentences.

Outbox files (what a print-and-post operator or a mailing provider's pickup reads):
``<queue id>-<16 hex>.pdf`` and ``<queue id>-<16 hex>.json``, where the hex is the start
of SHA-256 over the case-folded recipient address: no patient data, no Subject and no
name in a file name. Each file is written atomically: exclusive temp file
(``O_CREAT|O_EXCL|O_NOFOLLOW``, 0600, ``.<name>.<random>.tmp``), write, ``fsync``,
``rename`` onto its name, then one ``fsync`` of the directory. The PDF is renamed first
and the manifest last, so **a manifest names a complete letter**: the pickup takes a
letter when its ``.json`` is there. On any error both temp files and an already
renamed PDF of this call are removed, so no partial letter is left. The names depend
only on the queue id and the address, so the same hand-off redone after a crash
replaces the same two files (at-least-once, keyed by queue id: no second letter); an
old manifest is removed before its PDF is replaced.
The outbox is created 0700 when missing.

Manifest (JSON, UTF-8): the fields of ``Letter.manifest`` (format, version, created,
language, sender, recipient key and name, address lines and warnings, page counts,
attachment counts, ``text_decoding`` and ``subject_replaced``: how text whose
declared charset could not be used was read, see ``gateway.relay.letter_content``,
pdf_sha256) plus ``queue_id``, ``recipient_address`` and ``pdf_file``. Never the
Subject, the body or attachment names: the manifest is what an operator's tooling logs.

Trust level: secure agent; writes only in the outbox; logs queue id, file names, page
counts and the number of charset warnings only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Final

from gateway.log import get_logger
from gateway.printable import shown
from gateway.relay.letter import Letter, render_letter
from gateway.relay.postal_errors import (
    LetterTooLong,
    NoPostalAddress,
    PostalError,
    PostalUnavailable,
    UnreadableMessage,
)

__all__ = [
    "Letter",
    "LetterTooLong",
    "NoPostalAddress",
    "OutboxError",
    "PostalError",
    "PostalUnavailable",
    "UnreadableMessage",
    "letter_stem",
    "render_letter",
    "write_to_outbox",
]

FILE_MODE: Final = 0o600
DIRECTORY_MODE: Final = 0o700
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SAFE_QUEUE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

_log = get_logger("relay.postal")


class OutboxError(PostalUnavailable):
    """The letter could not be written to the outbox (temporary: retried)."""


def letter_stem(queue_id: str, recipient_address: str) -> str:
    """``<queue id>-<16 hex of SHA-256(address)>``, the name of both files (no suffix)."""
    if not _SAFE_QUEUE_ID.fullmatch(queue_id):
        raise ValueError("queue id is not a safe file name")
    local, at, domain = recipient_address.rpartition("@")
    # the mailbox as it compares (RFC 5321 2.4): str.casefold would make straße@ and
    # strasse@ one name, and the second letter replace the first
    mailbox = f"{local}@{domain.lower()}" if at else recipient_address
    digest = hashlib.sha256(mailbox.encode("utf-8")).hexdigest()
    return f"{queue_id}-{digest[:16]}"


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    """``data`` in a new ``.<name>.<random>.tmp`` (0600), written and fsynced."""
    temp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, _CREATE_FLAGS, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask cannot loosen it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temp


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_bytes(letter: Letter, queue_id: str, address: str, pdf_name: str) -> bytes:
    manifest = {
        **letter.manifest,
        "queue_id": queue_id,
        "recipient_address": address,
        "pdf_file": pdf_name,
    }
    text = json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True)
    return (shown(text, keep="\n") + "\n").encode()  # no raw control or bidi character


def _publish(directory: Path, files: list[tuple[str, bytes]]) -> list[Path]:
    """Write each (name, data) in order: temp, fsync, rename; undo all on error.

    The last file is the commit marker: an old copy of it (the same hand-off done
    before) is removed first, so it never stands beside a half-replaced first file."""
    temps: list[Path] = []
    published: list[Path] = []
    (directory / files[-1][0]).unlink(missing_ok=True)
    try:
        for name, data in files:
            temps.append(_write_temp(directory, name, data))
            os.rename(temps[-1], directory / name)
            published.append(directory / name)
        _fsync_directory(directory)
    except BaseException:
        for path in (*temps, *published):
            path.unlink(missing_ok=True)
        raise
    return published


def _ensure_outbox(outbox: Path) -> None:
    outbox.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    if outbox.is_symlink() or not outbox.is_dir():
        raise OutboxError("postal outbox is not a directory")


def write_to_outbox(
    outbox: Path, queue_id: str, recipient_address: str, letter: Letter
) -> tuple[Path, Path]:
    """Write the letter's PDF, then its manifest, atomically; return both paths.

    ``OutboxError`` (temporary) when the outbox cannot be written; ``ValueError`` when
    ``queue_id`` is not a plain file name.
    """
    stem = letter_stem(queue_id, recipient_address)
    pdf_name, manifest_name = f"{stem}.pdf", f"{stem}.json"
    manifest = _manifest_bytes(letter, queue_id, recipient_address, pdf_name)
    try:
        _ensure_outbox(outbox)
        pdf_path, manifest_path = _publish(
            outbox, [(pdf_name, letter.pdf), (manifest_name, manifest)]
        )
    except OSError as error:
        _log.error("postal.outbox_failed", queue_id=queue_id, error=error.strerror or error)
        raise OutboxError(
            f"cannot write to the postal outbox: {error.strerror or error}"
        ) from error
    _log.info(
        "postal.letter_written",
        queue_id=queue_id,
        file=pdf_name,
        pages=letter.manifest["pages"]["total"],
        charset_warnings=len(letter.manifest["text_decoding"]),
    )
    return pdf_path, manifest_path
