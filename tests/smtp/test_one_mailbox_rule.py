"""The SMTP front drops a repeated RCPT by the spool's rule, ``mailbox_key`` (session 8, H4).

Before, the session compared ``Address`` values, a rule of its own that happened to
agree with ``mailbox_key``. These tests check the front now calls the one rule (a
changed rule changes the front), and that the two could not have differed on any
address the front accepts, internationalized domains included.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gateway.smtp.envelope
import gateway.spool.model
from gateway.pki.dev import DevPki
from gateway.smtp.envelope import parse_rcpt, same_mailbox
from gateway.spool.model import mailbox_key
from tests.smtp.test_front_hunt import LOCAL_RECIPIENT, plain_mail, run_inbound

_LOCAL_PART, _, _DOMAIN = LOCAL_RECIPIENT.partition("@")
UPPER_LOCAL_PART = f"{_LOCAL_PART.upper()}@{_DOMAIN}"  # another mailbox (RFC 5321 §2.4)


def rcpt(address: str) -> gateway.smtp.envelope.RcptCommand:
    return parse_rcpt(f"<{address}>", smtputf8=True)


def test_the_front_uses_the_spools_function_not_a_copy() -> None:
    assert vars(gateway.smtp.envelope)["mailbox_key"] is gateway.spool.model.mailbox_key


def test_str_lower_is_idempotent_on_every_code_point() -> None:
    """Why ``Address`` equality (domain lowered once, by the parser) and ``mailbox_key``
    (lowered again) cannot differ: lowering a lowered domain changes nothing."""
    changed = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if (lowered := chr(code).lower()).lower() != lowered
    ]
    assert changed == []


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("bob@clinique-b.test", "bob@CLINIQUE-B.TEST", True),
        ("bob@clinique-b.test", "Bob@clinique-b.test", False),  # local part: exact
        ("zoé@clinique-é.test", "zoé@CLINIQUE-É.test", True),
        ("zoé@clinique-é.test", "Zoé@clinique-é.test", False),
        ("bob@bücher.test", "bob@BÜCHER.test", True),
        ("bob@bücher.test", "bob@xn--bcher-kva.test", False),  # U-label, A-label: two
        ("bob@faß.test", "bob@fass.test", False),  # distinct domains under IDNA2008
        ("bob@faß.test", "bob@FASS.test", False),
        ("bob@\u212aelvin.test", "bob@kelvin.test", True),  # KELVIN SIGN lowers to k
        ("bob@\u0130stanbul.test", "bob@i\u0307stanbul.test", True),
    ],
)
def test_the_fronts_rule_mailbox_key_and_address_equality_agree(
    first: str, second: str, same: bool
) -> None:
    one, other = rcpt(first), rcpt(second)
    assert same_mailbox(one, other) is same
    assert (one.recipient == other.recipient) is same
    assert (mailbox_key(first) == mailbox_key(second)) is same


async def test_a_repeated_rcpt_follows_the_spools_rule(
    tmp_path: Path, dev_pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the rule changed to ignore the local part's case, the front keeps one of two
    RCPTs that differ only there: it decides with the rule, not with ``Address``."""

    def whole_address_without_case(address: str) -> str:
        return address.lower()

    monkeypatch.setattr(gateway.smtp.envelope, "mailbox_key", whole_address_without_case)
    again = f"RCPT TO:<{UPPER_LOCAL_PART}>\r\n".encode()
    front = await run_inbound(
        tmp_path, dev_pki, plain_mail() + again, b"From: someone@clinique-b.test\r\n"
    )
    [message] = front.queue.messages  # the script's RCPT comes after ``again``
    assert [r.address for r in message.envelope.recipients] == [UPPER_LOCAL_PART]


async def test_local_parts_differing_by_case_stay_two_recipients(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    again = f"RCPT TO:<{UPPER_LOCAL_PART}>\r\n".encode()
    front = await run_inbound(
        tmp_path, dev_pki, plain_mail() + again, b"From: someone@clinique-b.test\r\n"
    )
    [message] = front.queue.messages
    assert [r.address for r in message.envelope.recipients] == [UPPER_LOCAL_PART, LOCAL_RECIPIENT]
