"""The header fields the inbound agent removes, adds and rewrites (sans-IO).

Role: pure functions over raw header fields (``gateway.relay.protect.HeaderField``: name
and raw CRLF lines, folding kept), used by ``gateway.inbound.process``.

Removed (``is_imitation``), from the outer header *and* from protected or wrapped
headers (a sender can sign or encrypt a forged field as easily as write it in clear):
- ``Authentication-Results`` whose authserv-id is ours: RFC 8601 §5 says an MTA MUST
  remove (or obscure) such fields arriving from outside before adding its own, since an
  MUA trusts the ones carrying its own ADMD's authserv-id (§2.5; §7.1 on forgeries).
  The authserv-id is the first ``value`` of the field after CFWS (§2.2): a token or a
  quoted-string (RFC 2045 §5.1), read with RFC 5322 §3.2.1-§3.2.4 lexing (comments nest
  and hold quoted-pairs; a quoted-string holds quoted-pairs), so every spelling a
  reader takes as our authserv-id is recognised; compared case-insensitively (it is a
  domain name, RFC 5321 §2.4). Fields of other ADMDs are kept.
- every ``Missive-*`` field: our own namespace; a decision of this project.

Added, at the top like trace fields (RFC 8601 §4):
- ``Authentication-Results: <hostname>; smime=pass|fail|none`` (RFC 8601 §2.2 syntax;
  the ``smime`` method and its results are registered by RFC 7281 for S/MIME signature
  verification) with the ``body.smime-identifier`` property (RFC 7281: the signer's
  address) and ``body.smime-serial`` (RFC 7281: the certificate's serial, in hex here)
  when a signer is known;
- ``Missive-Security: encrypted=<cipher|no>; signature=valid|invalid|none;
  signer="<address>"; weak=yes|no`` (our own field; ``encrypted`` names the content
  cipher, e.g. ``aes-256-gcm``; a message left encrypted for a key we do not hold names
  its cipher too, it is read from the envelope).

Rewritten: the Subject gets the ``[NON VÉRIFIÉ]`` tag, as an RFC 2047 encoded-word
(§2, §5(1): allowed in an unstructured field), whenever the signature is missing or not
valid. RFC 2047 §6.2 drops the white space between two encoded-words, so when the
original Subject starts with one, the tag's own encoded-word carries the separating
space; a message without Subject gets one holding the tag.

Security notes: every value written comes from the message, so what is written is
reduced to a conservative ASCII form (``safe_address``): an address that does not fit
is written with its odd characters replaced by ``?`` (Missive-Security) or omitted
(Authentication-Results). Nothing written contains CR or LF.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from email.header import Header

from gateway.relay.protect import HeaderField, header_fields
from gateway.smime.algorithms import CIPHERS

NOT_VERIFIED_TAG = "[NON VÉRIFIÉ]"
_TAG_WORD = Header(NOT_VERIFIED_TAG, "utf-8").encode().encode("ascii")
_TAG_WORD_WITH_SPACE = Header(NOT_VERIFIED_TAG + " ", "utf-8").encode().encode("ascii")
_WHITE_SPACE = " \t\r\n"
_TOKEN_END = _WHITE_SPACE + ';()"'
_SAFE_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}")
_UNSAFE_CHARACTER = re.compile(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~@-]")
OUR_PREFIX = "missive-"
OUR_SECURITY_FIELD = "missive-security"
_SECURITY_PARAMETER = re.compile(r"([a-z]+)=([a-z0-9-]+)")
TRACE_FIELDS = frozenset({"received", "return-path"})


class Signature(enum.Enum):
    """What the inbound agent concluded about the signature."""

    VALID = "valid"
    INVALID = "invalid"
    NONE = "none"

    @property
    def smime_result(self) -> str:
        """The RFC 7281 ``smime`` method result."""
        return {"valid": "pass", "invalid": "fail", "none": "none"}[self.value]


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (RFC 8601 §2.2), lower case,
    without a trailing dot: the token or quoted-string after the leading CFWS."""
    position = _after_cfws(value, 0)
    if value.startswith('"', position):
        text = _quoted_string(value, position + 1)
    else:
        end = position
        while end < len(value) and value[end] not in _TOKEN_END:
            end += 1
        text = value[position:end]
    return text.lower().rstrip(".")


def _after_cfws(value: str, position: int) -> int:
    """The position after the white space and comments at ``position`` (RFC 5322
    §3.2.2: comments nest; a backslash quotes the next character). An unclosed comment
    runs to the end."""
    depth = 0
    while position < len(value):
        character = value[position]
        if depth and character == "\\":
            position += 2
            continue
        if character == "(":
            depth += 1
        elif character == ")" and depth:
            depth -= 1
        elif not depth and character not in _WHITE_SPACE:
            return position
        position += 1
    return len(value)


def _quoted_string(value: str, position: int) -> str:
    """The text of the quoted-string whose opening quote ends before ``position``, its
    quoted-pairs resolved (RFC 5322 §3.2.4)."""
    text: list[str] = []
    while position < len(value) and value[position] != '"':
        if value[position] == "\\":
            position += 1
        text.append(value[position : position + 1])
        position += 1
    return "".join(text)


def is_imitation(field: HeaderField, hostname: str) -> bool:
    """Whether an inbound field imitates one of ours (see the module docstring)."""
    if field.key.startswith(OUR_PREFIX):
        return True
    if field.key == "authentication-results":
        return authserv_id(field.value) == hostname.lower().rstrip(".")
    return False


def without_imitations(fields: Iterable[HeaderField], hostname: str) -> list[HeaderField]:
    return [field for field in fields if not is_imitation(field, hostname)]


def safe_address(address: str) -> str | None:
    """``address`` when it is a plain ASCII addr-spec safe to write in a field, else None."""
    return address if _SAFE_ADDRESS.fullmatch(address) else None


def authentication_results(
    hostname: str, signature: Signature, signer: str, signer_serial: str
) -> bytes:
    """The ``Authentication-Results`` field we add (RFC 8601 §2.2, RFC 7281)."""
    parts = [f"smime={signature.smime_result}"]
    identifier = safe_address(signer)
    if identifier is not None and signature is not Signature.NONE:
        parts.append(f"body.smime-identifier={identifier}")
        if re.fullmatch(r"[0-9a-f]{1,80}", signer_serial):
            parts.append(f"body.smime-serial={signer_serial}")
    return f"Authentication-Results: {hostname};\r\n\t{' '.join(parts)}\r\n".encode("ascii")


def missive_security(encrypted: str, signature: Signature, signer: str, weak: bool) -> bytes:
    """The ``Missive-Security`` field we add (module docstring)."""
    shown = _UNSAFE_CHARACTER.sub("?", signer)[:320]
    cipher = re.sub(r"[^a-z0-9-]", "?", encrypted.lower())[:40] or "no"
    value = (
        f"encrypted={cipher}; signature={signature.value};\r\n"
        f'\tsigner="{shown}"; weak={"yes" if weak else "no"}'
    )
    return f"Missive-Security: {value}\r\n".encode("ascii")


def notifications_allowed(header_block: bytes) -> bool:
    """Whether an MDN may be built from this delivered copy's header block, by what our
    own ``Missive-Security`` field (the first one: every imitation was removed before
    ours was added) says of it: not when its content came under a cipher without
    integrity (CBC, or one we could not name) and without a valid signature. Such a
    header block may be an attacker's work on a captured message: EFAIL's CBC gadgets
    can put chosen text in a decrypted Disposition-Notification-To or Message-ID, and
    sending an MDN for one failure and not the other would be a padding oracle
    (``gateway.inbound.process``). No field of ours at all: not allowed (fail closed)."""
    fields = [f for f in header_fields(header_block) if f.key == OUR_SECURITY_FIELD]
    if not fields:
        return False
    values = dict(_SECURITY_PARAMETER.findall(fields[0].value))
    if values.get("signature") == Signature.VALID.value:
        return True
    cipher = values.get("encrypted", "")
    return cipher == "no" or (cipher in CIPHERS and CIPHERS[cipher].aead)


def tagged_subject(field: HeaderField) -> HeaderField:
    """The Subject field with ``[NON VÉRIFIÉ]`` put in front of its value."""
    value = field.raw.split(b":", 1)[1].lstrip(b" \t")
    if not value.strip():
        return HeaderField(field.name, b"Subject: " + _TAG_WORD + b"\r\n")
    word = _TAG_WORD_WITH_SPACE if value.startswith(b"=?") else _TAG_WORD
    return HeaderField(field.name, b"Subject: " + word + b" " + value)


def with_tagged_subject(fields: Sequence[HeaderField]) -> list[HeaderField]:
    """Every Subject tagged; a Subject holding only the tag added when there is none."""
    out = [tagged_subject(f) if f.key == "subject" else f for f in fields]
    if not any(f.key == "subject" for f in fields):
        out.append(HeaderField("Subject", b"Subject: " + _TAG_WORD + b"\r\n"))
    return out


def merged(outer: Sequence[HeaderField], protected: Sequence[HeaderField]) -> list[HeaderField]:
    """The header fields to show when the message carries protected ones (an RFC 9788
    Cryptographic Payload, or a wrapped message): those, and from the outside only the
    trace fields, which record the transit (RFC 5321 §4.4) and never come from the
    payload. A decision (fail closed): RFC 9788 has a receiving agent render the
    protected fields; an outer field is what anyone on the path could have added or
    changed, so none is shown beside a signature that does not cover it - a ``Reply-To``
    or ``Sender`` slipped around a validly signed letter would otherwise be shown with
    it, untagged (a helper's review found it; earlier, an outer field was kept whenever
    the payload had no field of that name)."""
    shown = [field for field in protected if field.key not in TRACE_FIELDS]
    return [field for field in outer if field.key in TRACE_FIELDS] + shown


__all__ = [
    "NOT_VERIFIED_TAG",
    "Signature",
    "authentication_results",
    "authserv_id",
    "is_imitation",
    "merged",
    "missive_security",
    "safe_address",
    "tagged_subject",
    "with_tagged_subject",
    "without_imitations",
]
