"""``queue_mdn``'s byte pre-check (session 9, CPU per message): a delivered copy whose
header block names no Disposition-Notification-To field is not parsed at all.

The pre-check must never skip a request ``read_request`` would find: the field name is
matched without regard to ASCII case, and the name in the body (after the empty line)
asks for nothing. Real spool, real audit trail, no crypto (``queue_mdn`` reads the
delivered copy's header block only)."""

from __future__ import annotations

from pathlib import Path

from gateway.pki.dev import DevPki
from gateway.spool import RECEIVED
from tests.inbound.site import ALICE, CLAIRE, MAILDIR, entries, opened_site

OURS = b'Missive-Security: encrypted=no; signature=valid;\r\n\tsigner=""; weak=no\r\n'


def delivered(field_line: bytes, body: bytes = b"Bonjour.\r\n") -> bytes:
    """A delivered copy (our field on top) with ``field_line`` in its header block."""
    return (
        OURS + b"From: Claire <" + CLAIRE.encode() + b">\r\n"
        b"To: Alice <" + ALICE.encode() + b">\r\n"
        b"Message-ID: <precheck-1@clinique-b.test>\r\n" + field_line + b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n" + body
    )


async def queued_for(dev_pki: DevPki, tmp_path: Path, message: bytes) -> str | None:
    async with opened_site(
        tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        child = await site.mdn_for_one(message, message)
        queued = await entries(site.spool, RECEIVED, "incoming")
        assert len(queued) == (0 if child is None else 1)
        if child is not None:
            assert queued[0][0].addresses == (CLAIRE,)
        return child


async def test_a_field_name_in_any_ascii_case_still_gets_its_mdn(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    line = b"dISPOSITION-notification-TO: <" + CLAIRE.encode() + b">\r\n"
    assert await queued_for(dev_pki, tmp_path, delivered(line)) is not None


async def test_the_usual_spelling_gets_its_mdn(dev_pki: DevPki, tmp_path: Path) -> None:
    line = b"Disposition-Notification-To: Claire <" + CLAIRE.encode() + b">\r\n"
    assert await queued_for(dev_pki, tmp_path, delivered(line)) is not None


async def test_the_name_in_the_body_only_asks_for_nothing(dev_pki: DevPki, tmp_path: Path) -> None:
    body = b"Disposition-Notification-To: <" + CLAIRE.encode() + b">\r\n"
    assert await queued_for(dev_pki, tmp_path, delivered(b"", body)) is None


async def test_no_field_no_mdn(dev_pki: DevPki, tmp_path: Path) -> None:
    assert await queued_for(dev_pki, tmp_path, delivered(b"")) is None
