"""DATA read in blocks gives exactly what DATA read line by line gives (gateway.smtp.data).

Both ways read a real ``asyncio.StreamReader`` with aiosmtpd's line limit, fed in random
pieces: the line way as the session read before (``readuntil(b"\\r\\n")``, a fragment on
overrun), the block way as it reads now (``read_block`` + ``feed_block``). They must agree
on the end, the problem, the content, the header section and the bytes left for the next
command.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.smtp.data import MAX_LINE, DataReceiver
from gateway.smtp.session import read_block

LIMIT = 1001  # aiosmtpd's StreamReader limit (SMTP.line_length_limit)
PIPELINED = b"QUIT\r\n"

PIECES = [
    b"From: <a@b.test>\r\n",
    b"Subject: x\r\n",
    b" folded\r\n",
    b"\r\n",
    b"body line\r\n",
    b"ends with a dot.\r\n",
    b"..stuffed\r\n",
    b".x\r\n",
    b"x" * 998 + b"\r\n",
    b"x" * 999 + b"\r\n",
    b"x" * 1000 + b"\r\n",
    b"y" * 1500 + b"\r\n",
    b"bare\rcr\r\n",
    b"bare\nlf\r\n",
    b"cr before crlf\r\r\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b".\n",
]


def random_message(rng: random.Random) -> bytes:
    weights = [8, 4, 2, 4, 10, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    count = rng.randint(0, 60)
    end = rng.choice([b".\r\n", b"\r\n.\r\n"])  # after ".\n", only the second ends it
    return b"".join(rng.choices(PIECES, weights, k=count)) + end + PIPELINED


async def feed_in_pieces(reader: asyncio.StreamReader, data: bytes, rng: random.Random) -> None:
    position = 0
    while position < len(data):
        size = rng.choice([1, 2, 3, 7, 100, 1001, 1003, 4096, 70_000])
        reader.feed_data(data[position : position + size])
        position += size
        await asyncio.sleep(0)
    reader.feed_eof()


async def by_lines(reader: asyncio.StreamReader, receiver: DataReceiver) -> None:
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as error:
            receiver.feed_fragment(await reader.read(error.consumed))
            continue
        if receiver.feed_line(line):
            return


async def by_blocks(reader: asyncio.StreamReader, receiver: DataReceiver) -> None:
    while not receiver.feed_block(await read_block(reader)):
        pass


async def outcome(data: bytes, seed: int, blocks: bool, max_size: int) -> tuple[object, ...]:
    reader = asyncio.StreamReader(limit=LIMIT)
    receiver = DataReceiver(max_size, chunk_size=1 << 30)
    feeder = asyncio.create_task(feed_in_pieces(reader, data, random.Random(seed)))
    try:
        await (by_blocks if blocks else by_lines)(reader, receiver)
    except asyncio.IncompleteReadError:
        pass  # the stream ended before a final dot: both ways must see it so
    await feeder
    rest = await reader.read()
    problem = receiver.problem.code if receiver.problem else None
    return receiver.ended, problem, receiver.take_chunk(final=True), receiver.headers, rest


async def test_blocks_and_lines_agree_on_random_messages() -> None:
    rng = random.Random(5)
    ended = 0
    for case in range(400):
        data = random_message(rng)
        max_size = rng.choice([100, 5_000, 1 << 20])
        lines = await outcome(data, case, blocks=False, max_size=max_size)
        blocks = await outcome(data, case + 10_000, blocks=True, max_size=max_size)
        assert blocks == lines, (case, data[:200])
        if lines[0]:
            ended += 1
            assert lines[-1] == PIPELINED
    assert ended > 300  # most cases do reach the final dot


def test_empty_message_and_pipelined_command() -> None:
    receiver = DataReceiver(1000)
    assert receiver.feed_block(b".\r\n")
    assert receiver.take_chunk(final=True) == b"" and receiver.problem is None


def test_body_in_one_block_is_unstuffed_and_headers_kept() -> None:
    receiver = DataReceiver(1000)
    assert not receiver.feed_block(b"From: <a@b.test>\r\n\r\n..one\r\ntw")
    assert receiver.feed_block(b"o\r\n.x\r\n.\r\n")
    assert receiver.take_chunk(final=True) == b"From: <a@b.test>\r\n\r\n.one\r\ntwo\r\nx\r\n"
    assert receiver.headers == b"From: <a@b.test>\r\n"


def test_a_partial_line_longer_than_the_limit_is_dropped_at_once() -> None:
    receiver = DataReceiver(1 << 20)
    assert not receiver.feed_block(b"x" * (MAX_LINE + 1))
    assert receiver.problem is not None and receiver.problem.code == 500
    assert not receiver.feed_block(b".\r\n")  # the tail of the long line, not the end
    assert receiver.feed_block(b"\r\n.\r\n")


@pytest.mark.parametrize("block", [b".\r\nQUIT\r\n", b"a\r\n.\r\nQUIT\r\n"])
def test_a_block_past_the_final_dot_is_a_programming_error(block: bytes) -> None:
    with pytest.raises(ValueError, match="past the final dot"):
        DataReceiver(1000).feed_block(block)


async def test_the_final_dot_after_a_too_long_line_cut_before_its_lf_is_seen() -> None:
    """The reader cuts a too-long line's CRLF in two (its limit) and the segment ends on
    the final dot's ``.``: the dot must still end the message, nothing pipelined after it
    may be read as body (found in review; the random cases did not reach this cut)."""
    too_long = b"y" * 1001 + b"\r\n"
    segments = [b"Subject: x\r\n\r\n" + too_long + b".", b"\r\n" + PIPELINED]
    for blocks in (False, True):
        reader = asyncio.StreamReader(limit=LIMIT)
        receiver = DataReceiver(1 << 20, chunk_size=1 << 30)
        reader.feed_data(segments[0])

        async def rest_later(reader: asyncio.StreamReader = reader) -> None:
            await asyncio.sleep(0.01)
            reader.feed_data(segments[1])
            reader.feed_eof()

        later = asyncio.create_task(rest_later())
        await (by_blocks if blocks else by_lines)(reader, receiver)
        await later
        assert receiver.ended, blocks
        assert receiver.problem is not None and receiver.problem.code == 500, blocks
        assert await reader.read() == PIPELINED, blocks
