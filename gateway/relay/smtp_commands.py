"""The MAIL and RCPT commands of one transaction, with the peer's extensions (sans-IO).

Role: build ``MAIL FROM`` and ``RCPT TO`` from a queued ``Envelope`` and the keywords of
the peer's EHLO reply, and refuse a message the peer cannot take before anything of it
is sent. No I/O: ``smtp_session`` sends the lines.

Decisions (RFC 5321 unless noted):
- ``SIZE=`` (RFC 1870) when the peer advertises SIZE; a message larger than the peer's
  declared limit is not sent (RFC 1870 §6): permanent failure 5.3.4;
- ``BODY=8BITMIME`` (RFC 6152) and ``SMTPUTF8`` (RFC 6531) only when the message needs
  them; a peer lacking what the message needs is a permanent failure (5.6.3, 5.6.7),
  raised as ``MessageRefused`` before MAIL;
- ``RET``/``ENVID`` on MAIL and ``NOTIFY``/``ORCPT`` on RCPT (RFC 3461 §4) only when the
  peer advertises DSN; ``mail_command`` says whether it passed them, so the DSN stage
  knows whether it must report "relayed" itself. ``ENVID`` and the ORCPT address are
  xtext-encoded (RFC 3461 §4).

Security: every text of the envelope was validated by ``gateway.spool.model`` (no CR,
LF, NUL or other control character), so no command built here can carry a second one.
"""

from __future__ import annotations

from gateway.relay.smtp_reply import MessageRefused, Outcome
from gateway.spool.model import Envelope, Recipient


def xtext(value: str) -> str:
    """RFC 3461 §4: encode ``+``, ``=``, controls and non-ASCII as ``+XX``."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{b:02X}"
        for c in value
        for b in (c.encode("utf-8") if ord(c) > 126 else bytes([ord(c)]))
    )


def mail_command(
    envelope: Envelope, extensions: dict[str, str], size: int | None
) -> tuple[str, bool]:
    """``MAIL FROM:<...> params`` and whether the DSN parameters were passed."""
    params = envelope.params
    words = [f"MAIL FROM:<{envelope.mail_from}>"]
    if size is not None and "SIZE" in extensions:
        words.append(f"SIZE={size}")
    if params.body is not None and params.body.upper() != "7BIT":
        if params.body.upper() != "8BITMIME" or "8BITMIME" not in extensions:
            raise MessageRefused(
                Outcome.failed(f"the next hop does not accept BODY={params.body}", "5.6.3")
            )
        words.append("BODY=8BITMIME")
    if params.smtputf8:
        if "SMTPUTF8" not in extensions:
            raise MessageRefused(Outcome.failed("the next hop does not support SMTPUTF8", "5.6.7"))
        words.append("SMTPUTF8")
    dsn = "DSN" in extensions
    if dsn and params.ret is not None:
        words.append(f"RET={params.ret}")
    if dsn and params.envid is not None:
        words.append(f"ENVID={xtext(params.envid)}")
    return " ".join(words), dsn


def rcpt_command(recipient: Recipient, dsn: bool) -> str:
    """``RCPT TO:<...>`` with NOTIFY/ORCPT when the peer supports DSN."""
    words = [f"RCPT TO:<{recipient.address}>"]
    if dsn and recipient.notify is not None:
        words.append("NOTIFY=" + ",".join(recipient.notify))
    if dsn and recipient.orcpt is not None:
        kind, _, address = recipient.orcpt.partition(";")
        words.append(f"ORCPT={kind};{xtext(address)}")
    return " ".join(words)


def check_size(size: int | None, extensions: dict[str, str]) -> None:
    """RFC 1870 §6: do not send a message larger than the peer's declared limit."""
    limit = extensions.get("SIZE", "")
    if size is not None and limit.isdigit() and int(limit) > 0 and size > int(limit):
        raise MessageRefused(
            Outcome.failed(f"message size {size} exceeds the next hop's limit {limit}", "5.3.4")
        )
