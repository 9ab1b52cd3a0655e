"""A minimal BER/DER *reader* for the outer framing of CMS messages, over a memoryview.

Role: find the large parts of a ContentInfo (the encrypted content, possibly split in
the chunks of a constructed OCTET STRING, as NSS writes it) without copying them, and
hand the small parts (RecipientInfos, AlgorithmIdentifiers) as bytes to asn1crypto.
Why by hand: asn1crypto copies the contents of every nesting level it parses, so a 50 MB
message costs four or five copies of itself (measured need: peak memory below 4x the
message size); no maintained library offers zero-copy BER framing.

Scope (ITU-T X.690 §8.1): identifier octets with low and high tag numbers, definite
lengths (short and long form) and the indefinite form ended by end-of-contents octets,
constructed strings. Values are not interpreted here.

Invariants and security notes:
- every offset is checked against the enclosing limit: a length that runs past its parent
  or the buffer is ``BerError``, never an IndexError or a read out of bounds;
- nesting is limited (``MAX_DEPTH``) and walking is iterative, so hostile input cannot
  exhaust the stack; lengths are limited to 8 octets (no bignum lengths);
- nothing is allocated in proportion to the input except the list of chunks of a
  constructed OCTET STRING: its pieces are walked one by one (no list of elements is
  built) and empty pieces give no chunk, so there is at most one chunk per three input
  octets (a hunt measured 187x the input in Tlv tuples and empty views before).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

MAX_DEPTH = 32
UNIVERSAL = 0
APPLICATION = 1
CONTEXT = 2
PRIVATE = 3


class BerError(ValueError):
    """Malformed BER framing (the message says where, for the local log)."""


class Tlv(NamedTuple):
    """One element: where it starts and ends in the buffer, and its identifier (a named
    tuple: the reader makes many of them, and tuples are the cheapest to build)."""

    tag_class: int
    constructed: bool
    number: int
    start: int  # offset of the identifier octets
    content_start: int
    content_end: int  # end of the contents (before the end-of-contents octets if indefinite)
    end: int  # offset just after the element
    indefinite: bool

    def is_(self, tag_class: int, number: int) -> bool:
        return self.tag_class == tag_class and self.number == number


def read_tlv(buf: memoryview, pos: int, limit: int) -> Tlv:
    """The element starting at ``pos``, which must end at or before ``limit``."""
    if pos + 2 <= limit:  # fast path: low tag number, short definite length
        first, short = buf[pos], buf[pos + 1]
        if first & 0x1F != 0x1F and short < 0x80:
            end = pos + 2 + short
            if end > limit:
                raise BerError(f"element at {pos} runs past its container ({end} > {limit})")
            return Tlv(first >> 6, bool(first & 0x20), first & 0x1F, pos, pos + 2, end, end, False)
    tag_class, constructed, number, pos_after_id = _read_identifier(buf, pos, limit)
    length, content_start = _read_length(buf, pos_after_id, limit)
    if length is None:
        if not constructed:
            raise BerError(f"indefinite length on a primitive element at {pos}")
        content_end = _find_end_of_contents(buf, content_start, limit)
        return Tlv(
            tag_class, constructed, number, pos, content_start, content_end, content_end + 2, True
        )
    end = content_start + length
    if end > limit:
        raise BerError(f"element at {pos} runs past its container ({end} > {limit})")
    return Tlv(tag_class, constructed, number, pos, content_start, end, end, False)


def children(buf: memoryview, parent: Tlv) -> list[Tlv]:
    """The elements inside a constructed element, in order (``_iter_children``'s walk as
    a plain loop: the generator cost a third of it on a message's few small elements)."""
    if not parent.constructed:
        raise BerError(f"element at {parent.start} is not constructed")
    found: list[Tlv] = []
    pos, end = parent.content_start, parent.content_end
    while pos < end:
        item = read_tlv(buf, pos, end)
        found.append(item)
        pos = item.end
    return found


def read_top(buf: memoryview) -> Tlv:
    """The single top-level element; trailing bytes other than zero padding are an error
    (some tools pad a DER file; nothing else may follow the ContentInfo)."""
    if not len(buf):
        raise BerError("empty input")
    top = read_tlv(buf, 0, len(buf))
    if any(buf[top.end :]):
        raise BerError("data after the top-level element")
    return top


def octet_string_chunks(buf: memoryview, element: Tlv) -> list[memoryview]:
    """The contents of an OCTET STRING (under any tag) as memoryviews, without copying:
    one view for the primitive form, the primitive pieces in document order for the
    constructed form (X.690 §8.7.3), nested constructed pieces included."""
    if not element.constructed:
        return [buf[element.content_start : element.content_end]]
    chunks: list[memoryview] = []
    stack = [_iter_children(buf, element)]
    while stack:
        piece = next(stack[-1], None)
        if piece is None:
            stack.pop()
            continue
        if not piece.is_(UNIVERSAL, 4):
            raise BerError(f"piece at {piece.start} of a constructed string is not one")
        if piece.constructed:
            if len(stack) >= MAX_DEPTH:
                raise BerError("constructed OCTET STRING nested too deeply")
            stack.append(_iter_children(buf, piece))
        elif piece.content_end > piece.content_start:
            chunks.append(buf[piece.content_start : piece.content_end])
    return chunks


def _iter_children(buf: memoryview, parent: Tlv) -> Iterator[Tlv]:
    """``children``, one element at a time (a hostile string may hold many pieces)."""
    pos = parent.content_start
    while pos < parent.content_end:
        item = read_tlv(buf, pos, parent.content_end)
        pos = item.end
        yield item


def _read_identifier(buf: memoryview, pos: int, limit: int) -> tuple[int, bool, int, int]:
    if pos >= limit:
        raise BerError(f"truncated identifier at {pos}")
    first = buf[pos]
    tag_class = first >> 6
    constructed = bool(first & 0x20)
    number = first & 0x1F
    pos += 1
    if number == 0x1F:
        number = 0
        for count in range(5):  # tag numbers up to 2**35: far beyond any CMS tag
            if pos >= limit:
                raise BerError(f"truncated high tag number at {pos}")
            octet = buf[pos]
            pos += 1
            if count == 0 and octet == 0x80:
                raise BerError(f"non-minimal tag number at {pos}")
            number = (number << 7) | (octet & 0x7F)
            if not octet & 0x80:
                break
        else:
            raise BerError(f"tag number too long at {pos}")
    return tag_class, constructed, number, pos


def _read_length(buf: memoryview, pos: int, limit: int) -> tuple[int | None, int]:
    """(length or None for indefinite, offset of the contents)."""
    if pos >= limit:
        raise BerError(f"truncated length at {pos}")
    first = buf[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0:
        return None, pos
    if count > 8 or count == 0x7F:
        raise BerError(f"length of {count} octets at {pos}")
    if pos + count > limit:
        raise BerError(f"truncated length at {pos}")
    return int.from_bytes(buf[pos : pos + count], "big"), pos + count


def _find_end_of_contents(buf: memoryview, pos: int, limit: int) -> int:
    """Offset of the end-of-contents octets closing an indefinite element whose contents
    start at ``pos``; nested indefinite elements are walked iteratively."""
    depth = 1
    while True:
        if pos + 2 > limit:
            raise BerError("missing end-of-contents octets")
        if buf[pos] == 0 and buf[pos + 1] == 0:
            depth -= 1
            if depth == 0:
                return pos
            pos += 2
            continue
        _, constructed, _, after_id = _read_identifier(buf, pos, limit)
        length, content_start = _read_length(buf, after_id, limit)
        if length is None:
            if not constructed:
                raise BerError(f"indefinite length on a primitive element at {pos}")
            depth += 1
            if depth > MAX_DEPTH:
                raise BerError("BER nested too deeply")
            pos = content_start
        else:
            pos = content_start + length
            if pos > limit:
                raise BerError("element runs past its container")
