"""The fast paths of ``MessageFacts.from_headers`` agree with the stdlib parser.

Every From: or Content-Type: value that a fast path accepts must give what the stdlib
``email`` parser (policy ``default``) gives for it; values it declines go to the stdlib
anyway. Random values are built from pieces chosen to sit on the edges of the fast
path's grammar (dots, quotes, comments, encoded words, groups, several addresses).
"""

from __future__ import annotations

import random
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

import pytest

from gateway.smtp import policy as p
from gateway.smtp.envelope import Address
from gateway.smtp.replies import SmtpReply

NAME_PIECES = ["Dr", "House", "A-B", "x_y", "Zoé", "=?utf-8?q?a?=", "(c)", "Dr.", ",", ";"]
LOCAL_PIECES = ["a", "Dr.House", "x+tag", "a..b", ".a", "a.", "a_b-c", "é", "a b", '"q"']
DOMAIN_PIECES = ["b.test", "Clinique-B.TEST", "localhost", "b..test", "[127.0.0.1]", "b.test."]
SHAPES = [
    "{l}@{d}",
    "<{l}@{d}>",
    "{n} <{l}@{d}>",
    '"{n}" <{l}@{d}>',
    "{n}<{l}@{d}>",
    "{n} {n} <{l}@{d}>",
    "{l}@{d} ({n})",
    "{l}@{d}, {l}@{d}",
    "{n}: {l}@{d};",
    "<{l}@{d}",
    "{l}@{d}>",
    "<{l}@{d}> {n}",
    "  {l}@{d}\t",
    "{l}@{d}@{d}",
]


def stdlib_from(field: bytes) -> tuple[Address, ...] | int:
    """The stdlib's answer: the addresses, or the reply code of the refusal."""
    message = BytesHeaderParser(policy=default_policy).parsebytes(field + b"\r\n")
    try:
        return p._parsed_from(message.get_all("From") or [])
    except SmtpReply as refusal:
        return refusal.reply.code


def pick(rng: random.Random, pieces: list[str]) -> str:
    """Half the time one of the first three (forms the fast path takes)."""
    return rng.choice(pieces[:3] if rng.random() < 0.5 else pieces)


def random_from(rng: random.Random) -> bytes:
    value = pick(rng, SHAPES).format(
        n=pick(rng, NAME_PIECES), l=pick(rng, LOCAL_PIECES), d=pick(rng, DOMAIN_PIECES)
    )
    return rng.choice(["From: ", "From:", "FROM: "]).encode() + value.encode() + b"\r\n"


def test_simple_from_agrees_with_the_stdlib() -> None:
    rng = random.Random(7)
    fast = 0
    for _ in range(2000):
        field = random_from(rng)
        simple = p._simple_from(field)
        if simple is not None:
            fast += 1
            assert simple == stdlib_from(field), field
    assert fast > 500  # the fast path is exercised, not only declined


@pytest.mark.parametrize(
    "field",
    [
        b"From: <someone@clinique-b.test>\r\n",
        b"From: Dr House <Dr.House@Clinique-B.TEST>\r\n",
        b'From: "House, Dr" <a@b.test>\r\n',
        b"From: a@b.test (comment)\r\n",
        b"From: =?utf-8?q?a?=@b.test\r\n",
        b"From: a@b.test\r\n  \r\n",
    ],
)
def test_simple_from_examples(field: bytes) -> None:
    simple = p._simple_from(field)
    assert simple is None or simple == stdlib_from(field)


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        (b"text/plain", False),
        (b"text/plain; charset=utf-8", False),
        (b"Multipart/Mixed; boundary=x", False),
        (b"multipart/signed; protocol=application/pkcs7-signature", None),
        (b"application/pkcs7-mime", None),
        (b"APPLICATION/X-PKCS7-MIME; smime-type=enveloped-data", None),
        (b"text/plain (comment)", None),
        (b"text / plain", None),
        (b"application/pkcs7-mime\r\n\tx=y", None),
    ],
)
def test_simple_content_type(value: bytes, fast: bool | None) -> None:
    field = b"Content-Type: " + value + b"\r\n"
    assert p._simple_smime((field,)) is fast
    headers = b"From: a@b.test\r\n" + field
    message = BytesHeaderParser(policy=default_policy).parsebytes(headers + b"\r\n")
    stdlib = p._is_smime(message.get_content_type(), message.get_param("protocol"))
    assert p.MessageFacts.from_headers(headers).smime is stdlib


def test_no_content_type_is_not_smime_and_two_ask_the_stdlib() -> None:
    assert p._simple_smime(()) is False
    two = (b"Content-Type: text/plain\r\n", b"Content-Type: application/pkcs7-mime\r\n")
    assert p._simple_smime(two) is None
    headers = b"From: a@b.test\r\n" + b"".join(two)
    assert p.MessageFacts.from_headers(headers).smime is False  # the first one counts


def test_only_from_and_content_type_fields_are_kept_with_their_continuations() -> None:
    headers = b"Subject: s\r\nFrom:\r\n  A <a@x.test>\r\nTo: t\r\ncontent-type: text/plain\r\n"
    fields = p._policy_fields(headers)
    assert fields.from_fields == (b"From:\r\n  A <a@x.test>\r\n",)
    assert fields.content_types == (b"content-type: text/plain\r\n",)
