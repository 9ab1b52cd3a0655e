"""A header section over ``HEADER_LIMIT`` is refused, never truncated: otherwise a From:
placed past the limit would be stored without the policy ever seeing it (review finding)."""

from __future__ import annotations

from gateway.smtp import replies as r
from gateway.smtp.data import HEADER_LIMIT, DataReceiver


def feed(receiver: DataReceiver, lines: list[bytes]) -> None:
    for line in lines:
        receiver.feed_line(line)


def test_header_section_over_the_limit_is_refused() -> None:
    receiver = DataReceiver(max_size=10 * HEADER_LIMIT)
    padding = [b"X-Pad: " + b"a" * 900 + b"\r\n"] * (HEADER_LIMIT // 900)
    feed(receiver, [b"From: me@outside.test\r\n", *padding, b"From: chef@chu-a.test\r\n"])
    feed(receiver, [b"\r\n", b"body\r\n", b".\r\n"])
    assert receiver.problem is r.HEADER_TOO_BIG
    assert receiver.take_chunk(final=True) == b""


def test_header_section_under_the_limit_is_kept_whole() -> None:
    receiver = DataReceiver(max_size=10 * HEADER_LIMIT)
    feed(receiver, [b"From: me@outside.test\r\n", b"Subject: s\r\n", b"\r\n", b"body\r\n"])
    feed(receiver, [b".\r\n"])
    assert receiver.problem is None
    assert receiver.headers == b"From: me@outside.test\r\nSubject: s\r\n"
