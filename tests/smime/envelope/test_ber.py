"""The zero-copy BER framing reader."""

from __future__ import annotations

import pytest

from gateway.smime import ber, der


def _top(data: bytes) -> tuple[memoryview, ber.Tlv]:
    view = memoryview(data)
    return view, ber.read_top(view)


def test_definite_and_indefinite_lengths() -> None:
    definite = der.sequence(der.integer(5), der.octet_string(b"abc"))
    view, top = _top(definite)
    assert (top.tag_class, top.constructed, top.number, top.end) == (0, True, 16, len(definite))
    assert [c.number for c in ber.children(view, top)] == [2, 4]
    indefinite = b"\x30\x80" + der.integer(5) + b"\x30\x80\x00\x00" + b"\x00\x00"
    view, top = _top(indefinite)
    assert top.indefinite and top.end == len(indefinite)
    inner = ber.children(view, top)
    assert [c.number for c in inner] == [2, 16]
    assert inner[1].indefinite and ber.children(view, inner[1]) == []


def test_high_tag_numbers_and_long_lengths() -> None:
    data = der.implicit(40, b"z" * 300, constructed=False)
    view, top = _top(data)
    assert (top.tag_class, top.number) == (ber.CONTEXT, 40)
    assert bytes(view[top.content_start : top.content_end]) == b"z" * 300


def test_constructed_octet_string_chunks_in_order() -> None:
    nested = b"\x24\x80" + der.octet_string(b"cd") + der.octet_string(b"") + b"\x00\x00"
    data = b"\xa0\x80" + der.octet_string(b"ab") + nested + der.octet_string(b"ef") + b"\x00\x00"
    view, top = _top(data)
    assert b"".join(ber.octet_string_chunks(view, top)) == b"abcdef"
    bad = b"\xa0\x80" + der.integer(1) + b"\x00\x00"
    view, top = _top(bad)
    with pytest.raises(ber.BerError):
        ber.octet_string_chunks(view, top)


def test_chunks_are_views_not_copies() -> None:
    data = der.octet_string(b"x" * 1000)
    view, top = _top(data)
    (chunk,) = ber.octet_string_chunks(view, top)
    assert chunk.obj is data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x05\x02\x01",
        b"\x30\x80\x02\x01\x01",  # no end-of-contents
        b"\x04\x80\x00\x00",  # indefinite primitive
        b"\x30\x89" + b"\x01" * 9,  # 9-octet length
        b"\x30\x02\x02\x05",  # child runs past its parent
        b"\x9f\x80\x01\x00",  # non-minimal high tag number
        b"\x9f\xff\xff\xff\xff\xff\x01\x00",  # tag number too long
        der.integer(1) + b"\x01",  # trailing data
        b"\x30\x80" * 100 + b"\x00\x00" * 100,  # nesting too deep
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(ber.BerError):
        view, top = _top(data)
        if top.constructed:
            ber.children(view, top)
            for child in ber.children(view, top):
                if child.constructed:
                    ber.children(view, child)


def test_trailing_zero_padding_is_tolerated() -> None:
    data = der.sequence(der.integer(1)) + b"\x00\x00\x00"
    _, top = _top(data)
    assert top.end == len(data) - 3
