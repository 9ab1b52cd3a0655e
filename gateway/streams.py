"""Whether an ``asyncio.StreamReader`` holds bytes nobody has read yet.

Role: ``has_unread(reader)`` for the SMTP/LMTP clients (``gateway.relay.smtp_session``,
``gateway.inbound.store_client``): bytes a server sent unasked - clear text after the
``220`` to STARTTLS (CVE-2011-0411's family, RFC 3207 §4.2), a reply too many, a reply
before the message - must never stand for a later reply.

asyncio has no public way to ask; ``StreamReader`` keeps them in ``_buffer`` (a
``bytearray`` since CPython 3.4). Written by hand here, once: the access is direct, not
``getattr`` with a default, so a CPython that renames it fails these security checks
loudly (``AttributeError`` in the tests) instead of silently passing them.

Trust level: looks at bytes, never reads them.
"""

from __future__ import annotations

import asyncio


def has_unread(reader: asyncio.StreamReader) -> bool:
    """True if ``reader`` holds bytes received and not yet read."""
    return bool(reader._buffer)  # type: ignore[attr-defined]
