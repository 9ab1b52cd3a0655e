"""``Sender:``, ``Resent-From:`` and ``Resent-Sender:`` are bound like ``From:`` (session 6,
H1). Before, the front read only From:: a submission user could send with ``Sender:`` a
colleague's (or a service's) address, and an outsider could put a local address there;
mail readers show "Sender on behalf of From", and DSNs, MDNs and the inbound signer
binding may read these fields.

The rules and the decisions (several fields, empty or unparsable fields, group syntax)
are in the module docstring of ``gateway.smtp.policy``. Pure tests of the policy first,
then two sessions on a real front (loopback, stopped by its context manager) to see the
reply and the audit event, which must be those of a From: refusal.
"""

from __future__ import annotations

import ipaddress
import random
import smtplib
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.pki.dev import DevPki
from gateway.smtp import policy as p
from gateway.smtp import replies as r
from gateway.smtp.envelope import Address
from gateway.smtp.policy import ClientFacts, MessageFacts, Policy, RelayRules
from gateway.smtp.replies import SmtpReply

from .front import (
    ALICE,
    BOB,
    PASSWORD,
    RELAY,
    SUBMISSION,
    FakeAuthenticator,
    FakeListeBlanche,
    client_context,
    in_thread,
    raw_exchange,
    running_front,
    write_config,
)

SENDER_FIELDS = ("Sender", "Resent-From", "Resent-Sender")
LOCAL = frozenset({"chu-a.test"})
REMOTE = "dr.house@clinique-b.test"
OUTSIDER = ClientFacts("203.0.113.9")
ALICE_LOGIN = ClientFacts("192.0.2.1", login=ALICE)
OPERATOR = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.clinique-b.test")])
IDNA_TWINS = {
    "fullwidth": "\uff43\uff48\uff55-\uff41.test",  # ｃｈｕ-ａ.test
    "soft-hyphen": "chu\u00ad-a.test",
    "ideographic-full-stop": "chu-a\u3002test",
}


def facts(*fields: str, from_field: str = f"From: {REMOTE}") -> MessageFacts:
    headers = "".join(f"{field}\r\n" for field in (from_field, *fields)) + "Subject: s\r\n"
    return MessageFacts.from_headers(headers.encode("utf-8", "surrogateescape"))


def refusal(action: object) -> SmtpReply:
    with pytest.raises(SmtpReply) as caught:
        action()  # type: ignore[operator]
    return caught.value


def submission() -> Policy:
    return Policy(RelayRules("submission", LOCAL), send_as=FakeAuthenticator())


def relay(accept: str = "any", **kwargs: object) -> Policy:
    rules = RelayRules(kind="relay", local_domains=LOCAL, inbound_accept=accept, **kwargs)  # type: ignore[arg-type]
    return Policy(rules, liste_blanche=FakeListeBlanche({"clinique-b.test": [OPERATOR]}))


# -- parsing ------------------------------------------------------------------------------


def test_sender_fields_are_read_in_order_whatever_their_case() -> None:
    parsed = facts(
        "SENDER: <secretariat@Clinique-B.TEST>",
        "resent-from: a@x.test, Zoé <zoe@y.test>",
        "Resent-Sender:\r\n  B <b@x.test>",
    )
    fields = [(f.name, [str(a) for a in f.mailboxes]) for f in parsed.sender_fields]
    assert fields == [
        ("Sender", ["secretariat@clinique-b.test"]),
        ("Resent-From", ["a@x.test", "zoe@y.test"]),
        ("Resent-Sender", ["b@x.test"]),
    ]
    assert parsed.originator_fields()[0].name == "From"


def test_resent_fields_may_repeat_one_set_per_resending() -> None:
    parsed = facts(
        "Resent-From: a@x.test",
        "Resent-Sender: b@x.test",
        "Resent-From: c@y.test",
        "Resent-Sender: d@y.test",
    )
    assert [str(f.mailboxes[0]) for f in parsed.sender_fields] == [
        "a@x.test",
        "b@x.test",
        "c@y.test",
        "d@y.test",
    ]


def test_a_group_is_read_as_its_members() -> None:
    parsed = facts("Sender: team: a@x.test;", "Resent-From: team: a@x.test, b@y.test;")
    assert [[str(a) for a in f.mailboxes] for f in parsed.sender_fields] == [
        ["a@x.test"],
        ["a@x.test", "b@y.test"],
    ]


@pytest.mark.parametrize(
    "fields",
    [
        ("Sender: a@x.test", "Sender: b@y.test"),  # RFC 5322 §3.6: at most one
        ("Sender:",),
        ("Sender:   ",),
        ("Resent-From:",),
        ("Sender: chef.service",),  # no domain
        ("Resent-Sender: <<>>",),
        ("Sender: a@x.test, b@y.test",),  # RFC 5322 grammar: one mailbox
        ("Resent-Sender: team: a@x.test, b@y.test;",),
        ("Sender: undisclosed:;",),  # a group without a member
        ("Resent-From: team:;",),
        ("Sender: bob.durand@chu-a.test\x00",),
        ("Resent-From: bob.durand@chu-a.test\x1b",),
        ("Sender : bob.durand@chu-a.test",),  # obsolete form (RFC 5322 §4.5.1)
    ],
    ids=[
        "two-sender-fields",
        "empty-sender",
        "blank-sender",
        "empty-resent-from",
        "no-domain",
        "empty-angle",
        "two-mailboxes-in-sender",
        "two-members-in-resent-sender",
        "empty-group-sender",
        "empty-group-resent-from",
        "NUL",
        "ESC",
        "obsolete-space-before-colon",
    ],
)
def test_sender_fields_that_cannot_be_judged_are_refused(fields: tuple[str, ...]) -> None:
    refused = refusal(lambda: facts(*fields))
    assert refused.reply is r.BAD_HEADER


NAME_PIECES = ["Dr", "House", "A-B", "x_y", "Zoé", "=?utf-8?q?a?=", "(c)", ",", ";"]
LOCAL_PIECES = ["a", "Dr.House", "x+tag", "a..b", ".a", "a_b-c", "é", '"q"']
DOMAIN_PIECES = ["b.test", "Clinique-B.TEST", "localhost", "b..test", "[127.0.0.1]", "b.test."]
SHAPES = ["{l}@{d}", "<{l}@{d}>", "{n} <{l}@{d}>", '"{n}" <{l}@{d}>', "{n}<{l}@{d}>"]
SHAPES += ["{l}@{d} ({n})", "{l}@{d}, {l}@{d}", "{n}: {l}@{d};", "<{l}@{d}", "{l}@{d}@{d}"]


def pick(rng: random.Random, pieces: list[str]) -> str:
    """Half the time one of the first three (forms the fast path takes)."""
    return rng.choice(pieces[:3] if rng.random() < 0.5 else pieces)


def random_value(rng: random.Random) -> str:
    return pick(rng, SHAPES).format(
        n=pick(rng, NAME_PIECES), l=pick(rng, LOCAL_PIECES), d=pick(rng, DOMAIN_PIECES)
    )


def stdlib_mailboxes(name: str, field: bytes) -> tuple[Address, ...] | int:
    message = BytesHeaderParser(policy=default_policy).parsebytes(field + b"\r\n")
    try:
        return p._parsed_mailboxes(name, message.get_all(name) or [])
    except SmtpReply as refused:
        return refused.reply.code


def test_the_fast_path_reads_sender_fields_as_the_stdlib_does() -> None:
    rng = random.Random(11)
    fast = 0
    for _ in range(1500):
        name = rng.choice(SENDER_FIELDS)
        field = f"{name}: {random_value(rng)}\r\n".encode()
        simple = p._simple_from(field)
        if simple is not None:
            fast += 1
            assert simple == stdlib_mailboxes(name, field), field
    assert fast > 200


# -- submission: the login's addresses only ------------------------------------------------


@pytest.mark.parametrize("name", SENDER_FIELDS)
def test_submission_refuses_a_colleague_in_a_sender_field(name: str) -> None:
    refused = refusal(
        lambda: submission().check_message(
            ALICE_LOGIN,
            [Address("x", "clinique-b.test")],
            facts(f"{name}: {BOB}", from_field=f"From: {ALICE}"),
        )
    )
    assert refused.reply is r.FROM_NOT_OWNED
    assert refused.detail.startswith(f"{name}: ")


@pytest.mark.parametrize(
    "field",
    [
        "Sender: chef.service@chu-a.test",  # a service address the login may not use
        f'Sender: "{BOB}" <{ALICE}>',  # named in the display name
        f"Sender: {ALICE} <{BOB}>",  # a part the parser skips
        f"Sender: team: {BOB};",  # a group member
        f"Resent-From: {ALICE}, {BOB}",
        f"Resent-From: {ALICE}\r\nResent-From: {BOB}",  # the second resending
        f"Sender: bob.durand@{IDNA_TWINS['fullwidth']}",
    ],
    ids=["service", "display-name", "skipped-part", "group", "list", "second-set", "idna-twin"],
)
def test_submission_refuses_every_address_that_is_not_the_logins(field: str) -> None:
    message = facts(field, from_field=f"From: {ALICE}")
    refused = refusal(
        lambda: submission().check_message(ALICE_LOGIN, [Address("x", "b.test")], message)
    )
    assert refused.reply is r.FROM_NOT_OWNED


@pytest.mark.parametrize(
    "field",
    [
        f"Sender: {ALICE}",
        f"Sender: Alice Martin <{ALICE}>",
        f'Resent-From: "Alice (ex {REMOTE})" <{ALICE}>',  # a remote named address: not judged
        f"Resent-From: {ALICE}\r\nResent-Sender: <{ALICE}>",
    ],
)
def test_submission_accepts_the_logins_own_address(field: str) -> None:
    message = facts(field, from_field=f"From: {ALICE}")
    submission().check_message(ALICE_LOGIN, [Address("x", "b.test")], message)


# -- relay listener, from outside: no local sender -----------------------------------------


@pytest.mark.parametrize("name", SENDER_FIELDS)
def test_an_outsider_cannot_put_a_local_address_in_a_sender_field(name: str) -> None:
    refused = refusal(
        lambda: relay().check_message(
            OUTSIDER, [Address("x", "chu-a.test")], facts(f"{name}: {BOB}")
        )
    )
    assert refused.reply is r.LOCAL_SENDER_FROM_OUTSIDE
    assert refused.detail == f"{name}: {BOB}"


@pytest.mark.parametrize(
    "field",
    [
        *(f"Sender: bob.durand@{twin}" for twin in IDNA_TWINS.values()),
        f'Sender: "{BOB}" <secretariat@clinique-b.test>',
        f"Sender: secretariat@clinique-b.test <{BOB}>",
        f"Resent-From: {REMOTE}\r\nResent-From: {BOB}",
        f"Resent-Sender: {BOB}: {REMOTE};",  # the group's display name
    ],
    ids=[*IDNA_TWINS, "display-name", "skipped-part", "second-set", "group-name"],
)
def test_an_outsider_cannot_hide_a_local_sender_in_a_sender_field(field: str) -> None:
    refused = refusal(
        lambda: relay().check_message(OUTSIDER, [Address("x", "chu-a.test")], facts(field))
    )
    assert refused.reply is r.LOCAL_SENDER_FROM_OUTSIDE


def test_the_u_label_of_an_idn_local_domain_is_a_local_sender_in_sender() -> None:
    policy = Policy(RelayRules("relay", frozenset({"xn--hpital-ixa.test"}), inbound_accept="any"))
    message = facts("Sender: chef@h\u00f4pital.test")
    refused = refusal(
        lambda: policy.check_message(OUTSIDER, [Address("x", "xn--hpital-ixa.test")], message)
    )
    assert refused.reply is r.LOCAL_SENDER_FROM_OUTSIDE


def test_an_outsider_with_outside_sender_fields_passes() -> None:
    message = facts(
        "Sender: Liste <liste-bounces@lists.clinique-b.test>",
        "Resent-From: =?utf-8?q?Zo=C3=A9?= <zoe@clinique-b.test>",
        "Resent-Sender: <zoe@clinique-b.test>",
    )
    relay().check_message(OUTSIDER, [Address("x", "chu-a.test")], message)


def test_trust_space_judges_the_from_domain_only() -> None:
    """The liste blanche names the author's domain: a list server's Sender: elsewhere
    does not need an entry (decision in the policy docstring)."""
    operator = ClientFacts("203.0.113.9", certificate_dn=OPERATOR)
    message = facts("Sender: liste@lists.elsewhere.test")
    relay("trust-space").check_message(operator, [Address("x", "chu-a.test")], message)


# -- relay clients sending out: local domains only -----------------------------------------


@pytest.mark.parametrize("name", SENDER_FIELDS)
def test_a_relay_client_sends_out_with_local_sender_fields_only(name: str) -> None:
    policy = relay(relay_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    hospital = ClientFacts("10.1.2.3")
    outside = [Address("x", "example.org")]
    policy.check_message(hospital, outside, facts(f"{name}: {BOB}", from_field=f"From: {ALICE}"))
    spoof = facts(f"{name}: {REMOTE}", from_field=f"From: {ALICE}")
    refused = refusal(lambda: policy.check_message(hospital, outside, spoof))
    assert refused.reply is r.OUTBOUND_FROM_NOT_LOCAL
    assert refused.detail == f"{name}: {REMOTE}"
    policy.check_message(hospital, [Address("x", "chu-a.test")], spoof)  # inside only


# -- on a real front: the reply and the audit of a From: refusal ---------------------------


async def test_submission_refuses_a_sender_spoof_as_it_refuses_a_from_spoof(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def spoof() -> list[tuple[int, bytes | str]]:
            answers: list[tuple[int, bytes | str]] = []
            with smtplib.SMTP("127.0.0.1", front.port("submission"), timeout=30) as client:
                client.starttls(context=client_context(front.ca_file))
                client.login(ALICE, PASSWORD)
                for fields in (f"From: {BOB}", f"From: {ALICE}\r\nSender: {BOB}"):
                    content = f"{fields}\r\nSubject: t\r\n\r\nhello\r\n".encode()
                    try:
                        client.sendmail(ALICE, ["x@clinique-b.test"], content)
                        answers.append((250, b""))
                    except smtplib.SMTPDataError as error:
                        answers.append((error.smtp_code, error.smtp_error))
            return answers

        from_answer, sender_answer = await in_thread(spoof)
    assert from_answer[0] == 550
    assert sender_answer == from_answer
    assert front.queue.messages == []
    from_event, sender_event = front.audit.of_type("smtp.refused")
    assert (sender_event.outcome, sender_event.actor) == (from_event.outcome, from_event.actor)
    assert sender_event.details["stage"] == from_event.details["stage"] == "data"
    assert sender_event.details["reason"].startswith("Sender: ")


async def test_an_outsider_local_sender_field_is_refused_by_the_front(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, accept="any")
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        script = [
            b"EHLO probe\r\n",
            f"MAIL FROM:<{REMOTE}>\r\n".encode(),
            f"RCPT TO:<{ALICE}>\r\n".encode(),
            b"DATA\r\n",
            f"From: {REMOTE}\r\nSender: {BOB}\r\n\r\nhello\r\n.\r\n".encode(),
        ]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-1] == r.reply_line(r.LOCAL_SENDER_FROM_OUTSIDE), replies
    assert front.queue.messages == []
    [event] = front.audit.of_type("smtp.refused")
    assert event.details["reason"] == f"Sender: {BOB}"
