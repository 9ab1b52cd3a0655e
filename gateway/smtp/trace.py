"""The ``Received:`` trace field the front puts at the top of each accepted message (sans-IO).

RFC 5321 §4.4: an SMTP server that accepts a message "MUST insert trace information at
the beginning of the message content". Form (RFC 5321 §4.4 ``Time-stamp-line``)::

    Received: from <helo> (<client IP>)
            by <hostname> (Missive) with <protocol> id <queue id>;
            <RFC 5322 date>

``with`` is the RFC 3848 / RFC 6531 §3.7.3 protocol name: ``ESMTP``, plus ``S`` after
TLS and ``A`` after AUTH (``ESMTPSA``), ``UTF8SMTP...`` for an SMTPUTF8 transaction,
``SMTP`` after HELO. The recipients are not named (``for`` clause left out: a message
to several recipients must not tell each one about the others).

Security: the HELO name is client-controlled; every character outside letters, digits
and ``.-:[]`` is replaced by ``?`` so nothing can break the field or add another one.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import format_datetime

_UNSAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]]")
MAX_HELO = 255
# room for the Received: field on top of the client's content: the spool's size limit is
# the advertised SIZE plus this, so a message just under SIZE is never refused after DATA
TRACE_ALLOWANCE = 2048


def protocol_name(*, extended: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str | None,
    when: datetime,
) -> bytes:
    """The folded ``Received:`` field, ending in CRLF."""
    safe_helo = _UNSAFE.sub("?", helo[:MAX_HELO]) or "unknown"
    identifier = f" id {queue_id}" if queue_id else ""
    text = (
        f"Received: from {safe_helo} ({_UNSAFE.sub('?', client_ip)})\r\n"
        f"\tby {hostname} (Missive) with {protocol}{identifier};\r\n"
        f"\t{format_datetime(when)}\r\n"
    )
    return text.encode("ascii")
