"""Issue 7 Speed, the cheaper readings of ``gateway.smime.mime``: each must give what the
slower one gave.

- ``MimeEntity.param`` (the Content-Type parameters read once per entity, plain values
  by ``mime.plain_parameters``) against the reference, the former reading: ``email``'s
  ``get_param(name, header="content-type")`` on the entity's fields, then
  ``collapse_rfc2231_value``, None when ``email`` raised. On generated values (RFC 2231
  continuations and charsets, quoted strings with escapes, duplicates, missing values,
  non-ASCII, very long) and hostile ones, for names present, absent and in other cases;
- ``mime.plain_parameters`` against ``Message.get_params()`` wherever it takes a value,
  and it takes every plain value (and the values the engine writes itself);
- ``mime.is_crlf_canonical`` against its definition (every CR followed by LF, every LF
  preceded by CR) on random line-end soups and long inputs: a guard for any cheaper
  check (one tried, keeping only the CR and LF octets, failed it on ``b"\\ra\\n"``).
"""

from __future__ import annotations

import email.utils
import random
from email.message import Message

import pytest

from gateway.smime import header_protection, mime, smime_parts

# --------------------------------------------------------------------------- parameters


def _reference_param(fields: Message, name: str) -> str | None:
    """The former ``MimeEntity.param``, as it called ``email``."""
    try:
        value = fields.get_param(name, header="content-type")
    except (ValueError, LookupError, TypeError):
        return None
    if value is None or isinstance(value, str):
        return value
    try:
        return email.utils.collapse_rfc2231_value(value)
    except (ValueError, LookupError, TypeError):
        return None


MEDIA_TYPES = (
    "multipart/signed",
    "Multipart/Signed",
    "application/pkcs7-mime",
    "text/plain",
    "text",
    "",
    " ",
    "text/plain=x",
    '"text/plain"',
    "multipart/*",
    "text/plain foo",
    "té/xt",
)
SEPARATORS = (";", "; ", ";\r\n ", " ;", ";\t", ";;", "; ;", ";\r\n\t", "", " ")
NAMES = (
    "boundary",
    "Boundary",
    "BOUNDARY",
    "protocol",
    "micalg",
    "smime-type",
    "name",
    "hp",
    "HP",
    "charset",
    "name*",
    "name*0",
    "name*1",
    "name*0*",
    "name*1*",
    "name*2",
    "filename*",
    "x-ünï",
    "",
    "bound ary",
    "*",
    "name**",
    "a'b",
)
EQUALS = ("=", " = ", "\r\n =", "", "==", "=\t")
VALUES = (
    "sha-256",
    "abc",
    "authEnveloped-data",
    "signed-data",
    '"application/pkcs7-signature"',
    '"----=_smime_0123abcd"',
    '"a;b"',
    '"a\\"b"',
    '"a\\\\"',
    '"a\\\\\\"b;c"',
    '"unterminated',
    '"',
    '""',
    "'",
    "us-ascii'en'%41%42",
    "utf-8''%c3%a9t%c3%a9",
    "iso-8859-1''%e9",
    "bogus-charset''%41",
    "idna''%ff%fe",
    "rot13''abc",
    "utf-8''%ff%fe",
    "x''%zz",
    "''",
    "<abc>",
    '"<abc>"',
    "été",
    '"été"',
    "a=b",
    '"a b "',
    '" "',
    "x" * 1200,
    '"' + "y" * 3000 + '"',
    "sha-1,sha-256",
    "\x0b",
    "a\x1fb",
)


def _generated_value(rng: random.Random) -> str:
    pieces = [rng.choice(MEDIA_TYPES)]
    for _ in range(rng.randint(0, 6)):
        pieces += [rng.choice(SEPARATORS), rng.choice(NAMES), rng.choice(EQUALS)]
        pieces.append(rng.choice(VALUES))
    if rng.random() < 0.2:
        pieces.append(rng.choice(SEPARATORS))
    return "".join(pieces)


def _entity(values: list[str]) -> mime.MimeEntity:
    fields = b"".join(b"Content-Type: " + value.encode() + b"\r\n" for value in values)
    return mime.parse_entity(b"MIME-Version: 1.0\r\n" + fields + b"\r\nbody\r\n")


def _names_to_ask(entity: mime.MimeEntity, rng: random.Random) -> list[str]:
    """Fixed names, every name the value holds (and in other cases), in random order."""
    asked = set(NAMES)
    try:
        present = entity.fields.get_params(header="content-type") or []
    except (ValueError, LookupError, TypeError):
        present = []
    for name, _ in present:
        asked |= {name, name.upper(), name.title()}
    ordered = sorted(asked)
    rng.shuffle(ordered)
    return ordered


def _assert_same_as_reference(entity: mime.MimeEntity, rng: random.Random) -> None:
    for name in _names_to_ask(entity, rng):
        assert entity.param(name) == _reference_param(entity.fields, name), (entity.header, name)


def _took_plain_path(value: str) -> bool:
    """``plain_parameters`` takes ``value`` and gives ``email``'s ``get_params()``."""
    plain = mime.plain_parameters(value)
    if plain is None:
        return False
    reference = _entity([value]).fields.get_params(header="content-type")
    assert plain == reference, value
    return True


def test_generated_parameters_read_as_email_reads_them() -> None:
    rng = random.Random(7)
    plain = unplain = 0
    for _ in range(3000):
        values = [_generated_value(rng) for _ in range(rng.choice((1, 1, 1, 2)))]
        _assert_same_as_reference(_entity(values), rng)
        if _took_plain_path(values[0]):
            plain += 1
        else:
            unplain += 1
    assert plain > 100 and unplain > 1000  # both readings were compared


PLAIN_VALUES = ("sha-256", "abc", "signed-data", '"a b "', '" "', '""', '"<x>"', "x" * 900)


def test_plain_values_take_the_plain_path() -> None:
    rng = random.Random(8)
    for _ in range(1000):
        pieces = [rng.choice(("multipart/signed", "text/plain", "x/y"))]
        for _ in range(rng.randint(0, 5)):
            name = rng.choice(("boundary", "Micalg", "hp", "smime-type", "a'b", "x.y"))
            pieces += [rng.choice(("; ", ";\r\n ", " ;\t", ";")), name, rng.choice(("=", " = "))]
            pieces.append(rng.choice(PLAIN_VALUES))
        value = "".join(pieces) + rng.choice(("", " ", "\r\n "))
        assert _took_plain_path(value), value
        _assert_same_as_reference(_entity([value]), rng)


def test_what_the_engine_writes_takes_the_plain_path() -> None:
    for entity in (
        smime_parts.multipart_signed(b"Content-Type: text/plain\r\n\r\nx\r\n", b"\x30\x00"),
        smime_parts.pkcs7_mime_entity(b"\x30\x00", "authEnveloped-data"),
        header_protection.with_protected_headers(
            b"Content-Type: text/plain\r\n\r\nx\r\n", [("Subject", "s")]
        ),
    ):
        parsed = mime.parse_entity(entity)
        raw = parsed.fields.get("Content-Type")
        assert isinstance(raw, str) and _took_plain_path(raw), raw


HOSTILE = (
    "text/plain; name*0*=x''%ff%fe; name*1*=%zz",
    "text/plain; name*0=a; name*1=b; name*0=c",
    "text/plain; name*=utf-8''%e2%82%ac; name=plain",
    "text/plain; name=plain; name*=utf-8''%e2%82%ac",
    "text/plain; NAME*0*=us-ascii'en'a; Name*1=b",
    "text/plain; name*99999999999999999999=a",
    "text/plain; name*0*=utf-8'en'; name*1*=%",
    "multipart/signed; boundary=; protocol",
    "multipart/signed; boundary; boundary=b",
    "multipart/signed; =b; boundary==b",
    'multipart/signed; boundary="a\\\\"; protocol="x"',
    'multipart/signed; boundary="a\\"; protocol="x"',
    'multipart/signed; boundary="a;b"c; micalg=sha-1',
    'multipart/signed; boundary="a"b"c"',
    "multipart/signed;;;",
    ";boundary=b",
    "boundary=b",
    "",
    "multipart/signed; boundary=b; BOUNDARY=c",
    "multipart/signed; boundary=<b>",
    'multipart/signed; boundary="<b>"',
    "multipart/signed; boundary*=''b",
    "multipart/signed; boundary*=x'y'z'w",
    "multipart/signed; micalg*0=sha-; micalg*1=256",
    "text/plain; charset*=utf-16''%ff",
    "text/plain; a=" + "b" * 100_000,
    "text/plain" + "; a=b" * 2000,
)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_parameters_read_as_email_reads_them(value: str) -> None:
    rng = random.Random(value)
    _assert_same_as_reference(_entity([value]), rng)
    _took_plain_path(value)


def test_absent_or_non_ascii_content_type() -> None:
    absent = mime.parse_entity(b"Subject: x\r\n\r\nbody")
    assert absent.param("boundary") is None
    raw = mime.parse_entity(b"Content-Type: text/plain; name=\xc3\xa9t\xc3\xa9\r\n\r\nx")
    assert not isinstance(raw.fields.get("Content-Type"), str)  # a Header: email's path
    rng = random.Random(3)
    _assert_same_as_reference(raw, rng)
    _assert_same_as_reference(absent, rng)


def test_parameters_are_read_once_per_entity() -> None:
    entity = _entity(['multipart/signed; protocol="p"; micalg=sha-256; boundary="b"'])
    assert (entity.param("boundary"), entity.param("protocol")) == ("b", "p")
    cached = entity.__dict__["_content_type_parameters"]
    assert entity.param("MICALG") == "sha-256"
    assert entity.__dict__["_content_type_parameters"] is cached


# --------------------------------------------------------------------------- line ends


def _canonical_by_definition(data: bytes) -> bool:
    for index, octet in enumerate(data):
        if octet == 0x0D and data[index + 1 : index + 2] != b"\n":
            return False
        if octet == 0x0A and (index == 0 or data[index - 1] != 0x0D):
            return False
    return True


def test_is_crlf_canonical_against_its_definition() -> None:
    rng = random.Random(5)
    pieces = (b"\r", b"\n", b"\r\n", b"\n\r", b"a", b"\r\r\n", b"\xff", b"\x00", b"\x8d\x8a")
    verdicts = set()
    for _ in range(5000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        expected = _canonical_by_definition(data)
        assert mime.is_crlf_canonical(data) is expected, data
        verdicts.add(expected)
    assert verdicts == {True, False}


@pytest.mark.parametrize(
    "data, canonical",
    [
        (b"", True),
        (b"line\r\n" * 5000, True),
        (b"line\r\n" * 5000 + b"\n", False),
        (b"\r" + b"line\r\n" * 5000, False),
        (b"line\r\n" * 2500 + b"li\rne\r\n" + b"line\r\n" * 2500, False),
        (b"\r\n" * 100_000, True),
        (bytes(range(256)) * 100, False),
    ],
)
def test_is_crlf_canonical_on_long_inputs(data: bytes, canonical: bool) -> None:
    assert mime.is_crlf_canonical(data) is canonical
    assert (mime.canonicalize_crlf(data) is data) is canonical
