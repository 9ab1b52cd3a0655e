"""``gateway.inbound.delivery._asks_dispatched_mdn``: the quick byte search in front of
``wants_final_delivery_mdn`` answers as the parse alone does, whatever the case of the
field name, and a field name seen only in the body asks nothing (pure, no I/O)."""

from __future__ import annotations

import pytest

from gateway.inbound.delivery import _asks_dispatched_mdn
from gateway.relay.mdn import wants_final_delivery_mdn

ASKING = "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true"
HEAD = b"From: <claire.durand@clinique-b.test>\r\nSubject: x\r\n"
BODY = b"\r\nLe patient va mieux.\r\n"

CASES = [
    HEAD + f"Disposition-Notification-Options: {ASKING}\r\n".encode() + BODY,
    HEAD + f"DISPOSITION-NOTIFICATION-OPTIONS: {ASKING}\r\n".encode() + BODY,
    HEAD + f"disposition-Notification-options :\r\n {ASKING}\r\n".encode() + BODY,
    HEAD
    + b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,false\r\n"
    + BODY,
    HEAD + BODY,
    HEAD + BODY + f"Disposition-Notification-Options: {ASKING}\r\n".encode(),  # in the body
    f"Disposition-Notification-Options: {ASKING}".encode(),  # a header block alone
    b"",
]


@pytest.mark.parametrize("content", CASES)
def test_the_filter_answers_as_the_parse(content: bytes) -> None:
    header = content.partition(b"\r\n\r\n")[0] + b"\r\n"
    assert _asks_dispatched_mdn(content) is wants_final_delivery_mdn(header)


def test_the_cases_hold_both_answers() -> None:
    answers = [_asks_dispatched_mdn(content) for content in CASES]
    assert answers == [True, True, True, False, False, False, True, False]
