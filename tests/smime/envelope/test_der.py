"""The DER encoder must produce exactly what asn1crypto's ``.dump()`` produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from asn1crypto import algos, cms, core

from gateway.smime import der


@pytest.mark.parametrize("length", [0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 24])
def test_octet_string_lengths(length: int) -> None:
    value = bytes(length)
    assert der.octet_string(value) == core.OctetString(value).dump()


@pytest.mark.parametrize(
    "value", [0, 1, -1, 127, 128, -128, -129, 255, 256, 2**64, -(2**64), 2**2047 + 12345]
)
def test_integer(value: int) -> None:
    assert der.integer(value) == core.Integer(value).dump()


@pytest.mark.parametrize(
    "dotted",
    [
        "1.2.840.113549.1.7.3",
        "2.16.840.1.101.3.4.1.46",
        "1.3.6.1.4.1.311.16.4",
        "2.999.1",
        "0.39",
        "1.2.840.113549.1.9.16.3.18",
    ],
)
def test_oid(dotted: str) -> None:
    assert der.oid(dotted) == core.ObjectIdentifier(dotted).dump()


@pytest.mark.parametrize("bad", ["", "1", "3.1", "1.40", "1.2.x", "1.-2"])
def test_oid_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        der.oid(bad)


def test_null_boolean_utf8_bitstring() -> None:
    assert der.null() == core.Null().dump()
    assert der.boolean(True) == core.Boolean(True).dump()
    assert der.boolean(False) == core.Boolean(False).dump()
    assert der.utf8_string("Médecin") == core.UTF8String("Médecin").dump()
    assert der.bit_string(b"\x01\x02") == core.OctetBitString(b"\x01\x02").dump()


def test_sequence_and_set_of_sorting() -> None:
    members = [der.integer(300), der.integer(2), der.octet_string(b"z"), der.integer(1)]
    joined = b"".join([der.integer(1), der.integer(2), der.integer(300), der.octet_string(b"z")])
    assert der.set_of(*members) == b"\x31" + bytes((len(joined),)) + joined
    attrs = cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["data"]},
            {"type": "message_digest", "values": [b"\x00" * 32]},
        ]
    )
    built = der.set_of(
        der.sequence(der.oid("1.2.840.113549.1.9.4"), der.set_of(der.octet_string(b"\x00" * 32))),
        der.sequence(der.oid("1.2.840.113549.1.9.3"), der.set_of(der.oid("1.2.840.113549.1.7.1"))),
    )
    assert built == attrs.dump(force=True)


def test_algorithm_identifier_sequence() -> None:
    expected = algos.DigestAlgorithm({"algorithm": "sha256", "parameters": core.Null()}).dump()
    assert der.sequence(der.oid("2.16.840.1.101.3.4.2.1"), der.null()) == expected


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC),
        datetime(1999, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_utc_time(moment: datetime) -> None:
    assert der.utc_time(moment) == core.UTCTime(moment).dump()


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC),
        datetime(2126, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 12, 0, 5, 250000, tzinfo=UTC),
    ],
)
def test_generalized_time(moment: datetime) -> None:
    assert der.generalized_time(moment) == core.GeneralizedTime(moment).dump()


def test_times_refuse_naive_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        der.utc_time(datetime(2026, 1, 1))  # naive: refused
    with pytest.raises(ValueError):
        der.utc_time(datetime(2050, 1, 1, tzinfo=UTC))


class _Tagged(core.Sequence):
    _fields = [  # noqa: RUF012 - asn1crypto declares fields this way
        ("a", core.Integer, {"explicit": 0}),
        ("b", core.OctetString, {"implicit": 1}),
        ("c", core.SetOf, {"implicit": 2, "spec": core.Integer}),
        ("d", core.Integer, {"implicit": 40}),
    ]


def test_explicit_implicit_and_high_tag_numbers() -> None:
    expected = _Tagged({"a": 5, "b": b"xy", "c": [7], "d": 9}).dump()
    built = der.sequence(
        der.explicit(0, der.integer(5)),
        der.implicit(1, b"xy", constructed=False),
        der.implicit(2, der.integer(7), constructed=True),
        der.implicit(40, b"\x09", constructed=False),
    )
    assert built == expected


def test_header_matches_tlv_prefix() -> None:
    content = b"a" * 1000
    assert der.header(der.OCTET_STRING, len(content)) + content == der.octet_string(content)
    assert der.context_header(0, False, 3) + b"abc" == der.implicit(0, b"abc", False)
