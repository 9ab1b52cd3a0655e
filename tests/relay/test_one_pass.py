"""Issue 6 Speed, the agent's and the relay's cheaper paths: each must give what the
slower one gave.

- ``mime.plain_header_message`` (a header block read by hand) against the reference,
  ``email``'s ``BytesHeaderParser`` (compat32), on generated and hostile blocks: the same
  ``Message`` (every attribute), or None and the reference is used;
- ``protect.SplitMessage.shown`` (the To/Cc addresses read once per message) against
  ``routing.header_addresses`` of the whole header block, and against ``email``'s own
  parse of the block with ``getaddresses`` on generated and hostile messages;
- ``routing.plain_addresses`` (plain mailboxes read by one regular expression) against
  ``email.utils.getaddresses`` on generated plain values (every one must take the fast
  path), on random mixes of address syntax and on hostile values (None, or the same);
- ``SplitMessage.entity`` is CRLF-canonical whatever the input's line ends (what
  ``cryptographic_payload`` vouches for to ``with_protected_headers``), and the payload is
  the one the checking call gives;
- ``smime_parts.new_boundary``: never a boundary found in the content;
- ``Queue.read_all`` (one I/O job per entry) against the spool's chunked reader,
  and a corrupt entry: ``CorruptEntry``; the relay stage quarantines a corrupt entry
  before it connects (the sink gets nothing).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import email.utils
import os
import random
from email.message import Message
from pathlib import Path

import pytest

from gateway.audit import AuditEvent
from gateway.pki.dev import DevPki
from gateway.relay import protect, routing
from gateway.smime import header_protection, mime, smime_parts
from gateway.spool import (
    RECEIVED,
    CorruptEntry,
    Envelope,
    MailParams,
    Origin,
    Recipient,
    Spool,
    consumer,
)
from gateway.spool.record import PREAMBLE_SIZE
from tests.peers.smtp_sink import SmtpSink
from tests.relay.test_relay_stage import BOB, WAIT, running, write_config

REFERENCE = email.parser.BytesHeaderParser(policy=email.policy.compat32)

NAMES = ("To", "cc", "From", "Subject", "Content-Type", "X-Ünï", "Received", "A", "x-y_z")
VALUES = (
    b"<claire.durand@clinique-b.test>",
    b'"Durand, Claire" <claire@b.test>, dan@b.test',
    b"undisclosed-recipients:;",
    b"Caf\xc3\xa9 \xff r\xc3\xa9sultats",
    b"",
    b"  \t padded  ",
    b"a:b:c",
    b'text/plain; charset="utf-8"',
    b"=?utf-8?q?Dupont?=",
)
HOSTILE = (
    b"",
    b"\r\n",
    b"To: x",
    b"From alice@chu-a.test Sat Nov 28 12:00:00 2026\r\nTo: x\r\n",
    b" leading continuation\r\nTo: x\r\n",
    b":no name\r\nTo: x\r\n",
    b"To : space before the colon\r\n",
    b"no colon at all\r\nTo: x\r\n",
    b"To: bare\rCR\r\n",
    b"To: bare\nLF\r\n",
    b"To: x\r\n\r\nCc: after a blank line\r\n",
    b"To: x\r\r\n",
    b"To: x\r\n\t\r\n",
    b"To: vertical\x0btab and \x85 next line\r\n",
    b"To: nul\x00\r\n",
)


def _attributes(message: Message) -> dict[str, object]:
    found = dict(vars(message))
    found["defects"] = [repr(defect) for defect in message.defects]
    return found


def _generated(rng: random.Random) -> bytes:
    lines: list[bytes] = []
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(NAMES).encode("utf-8")
        lines.append(name + b":" + rng.choice((b" ", b"", b"\t")) + rng.choice(VALUES))
        for _ in range(rng.choice((0, 0, 1, 2))):
            lines.append(rng.choice((b" ", b"\t", b"  ")) + rng.choice(VALUES))
    return b"".join(line + b"\r\n" for line in lines)


def _assert_same_as_reference(block: bytes) -> bool:
    """The fast parse equals the reference; True when the fast path took the block."""
    reference = REFERENCE.parsebytes(block + b"\r\n")
    plain = mime.plain_header_message(block)
    if plain is not None:
        assert _attributes(plain) == _attributes(reference), block
    entity = mime.parse_entity(block + b"\r\nbody\r\n")  # the header it carves out
    carved = REFERENCE.parsebytes(entity.header + b"\r\n")
    assert _attributes(entity.fields) == _attributes(carved), block
    return plain is not None


def test_plain_header_blocks_parse_as_email_does() -> None:
    rng = random.Random(6)
    for _ in range(2000):
        block = _generated(rng)
        took_fast_path = _assert_same_as_reference(block)
        assert took_fast_path == ("X-Ünï".encode() not in block)  # the one name not ftext


@pytest.mark.parametrize("block", HOSTILE)
def test_hostile_header_blocks_parse_as_email_does(block: bytes) -> None:
    _assert_same_as_reference(block)


def test_unplain_blocks_are_left_to_email() -> None:
    for block in HOSTILE[2:]:
        if block.startswith(b"To: x\r\n\r\n") or b"\r\n\t\r\n" in block:
            continue
        if b"\x0b" in block or b"\x00" in block or b"x\r\r\n" in block:
            continue
        assert mime.plain_header_message(block) is None, block


def test_random_bytes_parse_as_email_does() -> None:
    rng = random.Random(9)
    pieces = (b"To", b":", b" ", b"\t", b"\r\n", b"\r", b"\n", b"a@b", b"From ", b"\xc3\xa9")
    for _ in range(3000):
        block = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        _assert_same_as_reference(block + rng.choice((b"", b"\r\n")))


def test_split_message_shown_is_the_to_and_cc_addresses() -> None:
    message = (
        b"Received: from a\r\n\tby b\r\n"
        b"From: Alice <alice.martin@chu-a.test>\r\n"
        b'To: "Durand, Claire" <claire.durand@clinique-b.test>,\r\n dan@clinique-b.test\r\n'
        b"Cc: eve@clinique-b.test\r\nBcc: hidden@clinique-b.test\r\n"
        b"Subject: x\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
    )
    split = protect.SplitMessage.of(message)
    assert split.shown == routing.header_addresses(split.block())
    assert split.shown == (
        "claire.durand@clinique-b.test",
        "dan@clinique-b.test",
        "eve@clinique-b.test",
    )
    protect.check_tamper(split, "alice.martin@chu-a.test", ["dan@clinique-b.test"])
    with pytest.raises(protect.TamperError):
        protect.check_tamper(split, "alice.martin@chu-a.test", ["hidden@clinique-b.test"])


_LOCAL = "abcxyzABCXYZ0189_+-"
_DOMAIN = "abcxyzABCXYZ0189-"
_NAME_WORD = "aZ09!#$%&'*+/=?^_`{|}~.-"
_QUOTED = "aZ 09\t!#$%&'()*+,./:;<=>?@[]^_`{|}~-"
_FWS = ("", "", " ", "  ", "\t", "\r\n ", "\r\n\t", " \r\n  ")


def _text(rng: random.Random, alphabet: str, low: int = 1, high: int = 8) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def _addr_spec(rng: random.Random) -> str:
    local = ".".join(_text(rng, _LOCAL) for _ in range(rng.randint(1, 3)))
    return local + "@" + ".".join(_text(rng, _DOMAIN) for _ in range(rng.randint(1, 3)))


def _plain_mailbox(rng: random.Random) -> str:
    address = _addr_spec(rng)
    form = rng.randrange(4)
    if form == 0:
        return address
    if form == 1:
        return f"<{address}>"
    if form == 2:
        words = [_text(rng, _NAME_WORD) for _ in range(rng.randint(1, 3))]
        name = "".join(word + rng.choice(_FWS[2:]) for word in words[:-1]) + words[-1]
        return f"{name}{rng.choice(_FWS)}<{address}>"
    return f'"{_text(rng, _QUOTED, 0, 12)}"{rng.choice(_FWS)}<{address}>'


def _plain_value(rng: random.Random) -> str:
    items = [
        rng.choice(_FWS) + _plain_mailbox(rng) + rng.choice(_FWS) for _ in range(rng.randint(1, 4))
    ]
    return ",".join(items)


def _reference_addresses(values: list[str]) -> tuple[str, ...]:
    return tuple(a for _, a in email.utils.getaddresses(values) if "@" in a)


def _assert_plain_addresses_as_reference(values: list[str]) -> bool:
    """``plain_addresses`` is None or what ``getaddresses`` gives (with either filter
    its callers use); True when the fast path took the values."""
    fast = routing.plain_addresses(values)
    if fast is None:
        return False
    assert fast == _reference_addresses(values), values
    assert fast == tuple(a for _, a in email.utils.getaddresses(values) if a), values
    assert routing.addresses_in(values) == fast
    return True


def test_plain_mailboxes_read_as_getaddresses_does() -> None:
    rng = random.Random(61)
    for _ in range(3000):
        values = [_plain_value(rng) for _ in range(rng.randint(1, 3))]
        assert _assert_plain_addresses_as_reference(values), values
    assert routing.plain_addresses(["", "a@b"]) == ("a@b",)


def test_random_address_syntax_reads_as_getaddresses_does() -> None:
    rng = random.Random(62)
    pieces = (
        "a", "Z", "9", ".", "@", "<", ">", ",", " ", "\t", "\r\n ", '"', "\\", "(", ")",
        ":", ";", "[", "]", "é", "\r", "\n", "-", "_", "'", "=?", "a@b.c", "<x@y>", "\x00",
    )  # fmt: skip
    taken = 0
    for _ in range(5000):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        taken += _assert_plain_addresses_as_reference([value])
        assert routing.addresses_in([value]) == _reference_addresses([value])
    assert taken > 100  # the mixes do reach the fast path


@pytest.mark.parametrize(
    "value",
    [
        "undisclosed-recipients:;",
        "Team: a@b.test, c@d.test;",
        "a@b.test (Alice)",
        "a@b.test c@d.test",
        "a@b.test,",
        ",a@b.test",
        "a@b.test,,c@d.test",
        "<@relay.test:a@b.test>",
        '"quoted local"@b.test',
        "a@[127.0.0.1]",
        "a@b.test <c@d.test>",
        "Jean a@b.test <c@d.test>",
        "Jean <a@b.test> <c@d.test>",
        "Jean (Dr) <a@b.test>",
        "Jean <a@b.test> (Dr)",
        "Jean\r\n<a@b.test>",
        '"Du\\"pont" <a@b.test>',
        "Hélène <h@b.test>",
        "<a@b.test>x",
        "a@b.test\r\n",
        "\r\n",
        "a@b.test\n c@d.test",
        "a@b.test\r\nc@d.test",
        "<a@b.test",
        "a@b.test>",
        "a.@b.test",
        ".a@b.test",
        "a@b.test.",
        "a@.b.test",
    ],
)
def test_hostile_address_values_read_as_getaddresses_does(value: str) -> None:
    _assert_plain_addresses_as_reference([value])
    assert routing.addresses_in([value]) == _reference_addresses([value])


@pytest.mark.parametrize(
    "value",
    [
        "Jean" + " " * 200_000 + "x",
        "Jean" + " a" * 200_000 + "x",
        "Jean" + "\r\n " * 100_000 + "x",
        "<a@b.test>" + " " * 200_000 + "x",
        "a@b.test," * 100_000 + " x",
        "a" * 200_000,
        '"' + " " * 200_000,
    ],
)
def test_long_hostile_values_are_refused_quickly(value: str) -> None:
    """A regular expression that backtracks (quadratic or worse) on these runs for
    minutes; this one refuses each in one pass, well inside the test timeout."""
    assert routing.plain_addresses([value]) is None


def _reference_shown(message: bytes) -> tuple[str, ...]:
    """To then Cc addresses by ``email`` alone: the header block without Bcc, parsed."""
    split = protect.SplitMessage.of(message)
    parsed = REFERENCE.parsebytes(split.block() + b"\r\n")
    values = [str(v) for name in ("to", "cc") for v in parsed.get_all(name, [])]
    return _reference_addresses(values)


def test_shown_is_what_email_reads_on_generated_messages() -> None:
    rng = random.Random(63)
    names = (b"To", b"to", b"CC", b"Cc", b"From", b"Bcc", b"Subject", b"X-A", b"Received")
    for _ in range(2000):
        lines = []
        for _ in range(rng.randint(0, 6)):
            name = rng.choice(names)
            value = _plain_value(rng).encode("ascii")
            if rng.random() < 0.1:
                value = rng.choice(VALUES)
            lines.append(name + b":" + rng.choice((b" ", b"", b"\t")) + value + b"\r\n")
        message = b"".join(lines) + b"\r\nbody\r\n"
        split = protect.SplitMessage.of(message)
        assert split.shown == _reference_shown(message), message
        assert split.shown == routing.header_addresses(split.block())


@pytest.mark.parametrize("block", HOSTILE)
def test_shown_is_what_email_reads_on_hostile_blocks(block: bytes) -> None:
    ending = b"" if block.endswith(b"\r\n") else b"\r\n"
    for body in (block, block.replace(b": x", b": z@y.test")):  # an address after the flaw
        for extra in (b"", b"To: a@b.test\r\n", b"Cc: <c@d.test>\r\n"):
            message = extra + body + ending + b"\r\nx"
            assert protect.SplitMessage.of(message).shown == _reference_shown(message), message


@pytest.mark.parametrize(
    "message",
    [
        b"To: a@b.test\r\nSubject: s\r\nContent-Type: text/plain\r\n\r\nbody\r\n",
        b"To: a@b.test\nSubject: s\nContent-Type: text/plain\n\nbare\nLF\n",
        b"To: a@b.test\rContent-Type: text/plain\r\rbare\rCR\r",
        b"To: a@b.test\r\nContent-Type: text/plain\r\n\r\nmixed\nand\rends\r\n",
        b" leading: continuation\r\nContent-Type: text/plain\r\n\r\nx",
        b"no blank line\r\nContent-Type: text/plain",
        b"",
    ],
)
def test_split_entity_is_canonical_and_payload_unchanged(message: bytes) -> None:
    split = protect.SplitMessage.of(message)
    assert mime.is_crlf_canonical(split.entity)
    assert mime.is_crlf_canonical(split.block())
    payload = protect.cryptographic_payload(split, protect=True, wrap=False)
    outer = protect._outer_fields(split, protect=True)
    checked = header_protection.with_protected_headers(
        split.entity, split.block() + protect._hp_outer_fields(outer), hp="cipher"
    )
    assert payload == checked


def test_new_boundary_skips_a_boundary_found_in_the_content(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    draws = iter([f"{0xABC:032x}", f"{0xABC:032x}", f"{0xDEF:032x}"])
    monkeypatch.setattr(smime_parts.secrets, "token_hex", lambda size: next(draws))
    taken = f"----=_smime_{0xABC:032x}"
    assert smime_parts.new_boundary(b"no boundary here") == taken
    content = b"a line that quotes " + taken.encode() + b"\r\n"
    assert smime_parts.new_boundary(content) == f"----=_smime_{0xDEF:032x}"


class _Events:
    """The audit trail of a bare spool: events kept in memory."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


async def _spool_entry(root: Path, content: bytes) -> tuple[Spool, str]:
    spool = Spool(root, audit=_Events(), actor="test", max_message_size=1 << 20)
    envelope = Envelope("alice.martin@chu-a.test", (Recipient(BOB),), MailParams())
    queue_id = await spool.queue(RECEIVED).add(envelope, Origin("test"), content)
    return spool, queue_id


def _flip_content_byte(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(PREAMBLE_SIZE + 5)
        byte = file.read(1)
        file.seek(PREAMBLE_SIZE + 5)
        file.write(bytes([byte[0] ^ 0x01]))
        file.flush()
        os.fsync(file.fileno())


@pytest.mark.parametrize("size", [6, 10_240, 600_000])
async def test_read_all_is_the_whole_checked_content(tmp_path: Path, size: int) -> None:
    content = (b"line of text\r\n" * (size // 14 + 1))[:size]
    spool, queue_id = await _spool_entry(tmp_path / "spool", content)
    try:
        queue = spool.queue(RECEIVED)
        await queue.recover()
        entry = await queue.claim()
        assert entry is not None and entry.queue_id == queue_id
        assert await queue.read_all(entry) == content
        assert b"".join([chunk async for chunk in queue.content(entry)]) == content
        _flip_content_byte(entry.path)
        with pytest.raises(CorruptEntry):
            await queue.read_all(entry)
    finally:
        await spool.aclose()


async def test_content_or_quarantine_moves_a_corrupt_entry_to_corrupt(tmp_path: Path) -> None:
    """What every stage does with a claimed entry whose bytes fail their checksum."""
    spool, queue_id = await _spool_entry(tmp_path / "spool", b"line of text\r\n" * 100)
    try:
        queue = spool.queue(RECEIVED)
        await queue.recover()
        entry = await queue.claim()
        assert entry is not None
        _flip_content_byte(entry.path)
        assert await consumer.content_or_quarantine(queue, entry) is None
        assert [info.name for info in await queue.scan("corrupt")] == [queue_id]
        assert await queue.scan("active") == []
    finally:
        await spool.aclose()


async def test_the_relay_quarantines_a_corrupt_entry_before_connecting(
    smtp_sink: SmtpSink, dev_pki: DevPki, tmp_path: Path
) -> None:
    config = write_config(tmp_path, dev_pki, smtp_sink.port)
    async with running(config, serve=False) as site:
        queue_id = await site.add(Recipient(BOB))
        _flip_content_byte(site.relay.dirs.entry("incoming", queue_id))
    async with running(config) as site:
        async with asyncio.timeout(WAIT):
            while not [e for e in site.audit_events("spool.corrupt") if e.queue_id == queue_id]:
                await asyncio.sleep(0.05)
        assert await site.relay.scan("corrupt")
    assert smtp_sink.messages == []
    assert smtp_sink.connection_count == 0
