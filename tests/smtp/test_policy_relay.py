"""The relay policy without sockets: every rule of ``gateway.smtp.policy``."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.smtp.envelope import Address
from gateway.smtp.policy import ClientFacts, MessageFacts, Policy, RelayRules
from gateway.smtp.replies import SmtpReply

from .front import FakeAuthenticator, FakeListeBlanche

LOCAL = frozenset({"chu-a.test"})
OPERATOR = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.clinique-b.test")])
OTHER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.intrus.test")])
ALICE = Address("alice.martin", "chu-a.test")
BOB = Address("bob.durand", "chu-a.test")
REMOTE = Address("dr.house", "clinique-b.test")


def relay(accept: str = "any", **kwargs: object) -> Policy:
    rules = RelayRules(kind="relay", local_domains=LOCAL, inbound_accept=accept, **kwargs)  # type: ignore[arg-type]
    return Policy(rules, liste_blanche=FakeListeBlanche({"clinique-b.test": [OPERATOR]}))


def code(action: object) -> int:
    with pytest.raises(SmtpReply) as caught:
        action()  # type: ignore[operator]
    return caught.value.reply.code


def facts(*addresses: Address, smime: bool = False) -> MessageFacts:
    return MessageFacts(tuple(addresses), smime)


def test_submission_binds_sender_and_from() -> None:
    policy = Policy(RelayRules("submission", LOCAL), send_as=FakeAuthenticator())
    alice = ClientFacts("192.0.2.1", login="alice.martin@chu-a.test")
    policy.check_mail(alice, ALICE)
    policy.check_rcpt(alice, REMOTE, 0)  # submission may send anywhere
    policy.check_message(alice, [REMOTE], facts(ALICE))
    assert code(lambda: policy.check_mail(alice, BOB)) == 553
    assert code(lambda: policy.check_message(alice, [REMOTE], facts(ALICE, BOB))) == 550
    assert code(lambda: policy.check_mail(ClientFacts("192.0.2.1"), ALICE)) == 530


def test_outsider_only_to_local_domains_and_never_as_local_sender() -> None:
    policy = relay()
    outsider = ClientFacts("203.0.113.9")
    policy.check_mail(outsider, REMOTE)
    policy.check_mail(outsider, Address.null())  # bounces come from <>
    policy.check_rcpt(outsider, ALICE, 0)
    assert code(lambda: policy.check_rcpt(outsider, Address("x", "example.org"), 0)) == 554
    assert code(lambda: policy.check_rcpt(outsider, Address("x%y", "chu-a.test"), 0)) == 554
    assert code(lambda: policy.check_mail(outsider, ALICE)) == 550
    assert code(lambda: policy.check_message(outsider, [ALICE], facts(BOB))) == 550


def test_relay_client_by_network_sends_out_with_local_from_only() -> None:
    policy = relay(relay_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    hospital = ClientFacts("10.1.2.3")
    assert policy.is_relay_client(hospital)
    policy.check_rcpt(hospital, Address("x", "example.org"), 0)
    policy.check_message(hospital, [Address("x", "example.org")], facts(ALICE))
    outbound_spoof = facts(Address("x", "example.org"))
    assert (
        code(lambda: policy.check_message(hospital, [Address("y", "ex.org")], outbound_spoof))
        == 550
    )
    policy.check_message(hospital, [ALICE], outbound_spoof)  # inside only: not outbound
    assert not policy.is_relay_client(ClientFacts("11.0.0.1"))


def test_relay_client_by_dn_compares_normalised() -> None:
    policy = relay(relay_dns=(OPERATOR,))
    same = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MX.Clinique-B.test")])
    assert policy.is_relay_client(ClientFacts("203.0.113.9", certificate_dn=same))
    assert not policy.is_relay_client(ClientFacts("203.0.113.9", certificate_dn=OTHER))
    assert not policy.is_relay_client(ClientFacts("203.0.113.9"))


def test_trust_space_checks_envelope_and_header_domains() -> None:
    policy = relay("trust-space")
    operator = ClientFacts("203.0.113.9", certificate_dn=OPERATOR)
    policy.check_mail(operator, REMOTE)
    policy.check_message(operator, [ALICE], facts(REMOTE))
    other = ClientFacts("203.0.113.9", certificate_dn=OTHER)
    assert code(lambda: policy.check_mail(other, REMOTE)) == 550
    assert code(lambda: policy.check_mail(ClientFacts("203.0.113.9"), REMOTE)) == 550
    unlisted = facts(Address("x", "unlisted.test"))
    assert code(lambda: policy.check_message(operator, [ALICE], unlisted)) == 550


def test_signed_accepts_only_smime() -> None:
    policy = relay("signed")
    outsider = ClientFacts("203.0.113.9")
    policy.check_message(outsider, [ALICE], facts(REMOTE, smime=True))
    assert code(lambda: policy.check_message(outsider, [ALICE], facts(REMOTE))) == 550


def test_max_recipients() -> None:
    policy = relay(max_recipients=100)
    policy.check_rcpt(ClientFacts("203.0.113.9"), ALICE, 99)
    assert code(lambda: policy.check_rcpt(ClientFacts("203.0.113.9"), ALICE, 100)) == 452


SIGNED = b'multipart/signed; protocol="application/pkcs7-signature"; boundary="x"'
ENVELOPED = b"application/pkcs7-mime; smime-type=enveloped-data"
PGP = b"multipart/signed; protocol=application/pgp-signature"


@pytest.mark.parametrize(
    ("content_type", "smime"),
    [(b"text/plain", False), (SIGNED, True), (ENVELOPED, True), (PGP, False)],
)
def test_message_facts_smime(content_type: bytes, smime: bool) -> None:
    headers = b"From: a@b.test\r\nContent-Type: " + content_type + b"\r\n"
    assert MessageFacts.from_headers(headers).smime is smime


@pytest.mark.parametrize(
    "headers",
    [b"To: a@b.test\r\n", b"From: a@b.test\r\nFrom: c@d.test\r\n", b"From: undisclosed\r\n"],
)
def test_message_facts_need_one_from(headers: bytes) -> None:
    with pytest.raises(SmtpReply) as caught:
        MessageFacts.from_headers(headers)
    assert caught.value.reply.code == 550


def test_message_facts_from_domain_lower_cased() -> None:
    parsed = MessageFacts.from_headers(b"From: Dr House <Dr.House@Clinique-B.TEST>\r\n")
    assert parsed.from_addresses == (Address("Dr.House", "clinique-b.test"),)


@pytest.mark.parametrize(
    "headers",
    [
        b"From: a@x.test\r\nFrom : chef@chu-a.test\r\nSubject: s",  # obsolete form (RFC 5322 4.5.1)
        b"From : chef@chu-a.test\r\nSubject: s",
        b"From: a@x.test\r\nnot a header line\r\nFrom: chef@chu-a.test",
        b"From: a@x.test\r\nFROM: chef@chu-a.test",
    ],
)
def test_a_from_field_the_parser_might_skip_is_refused(headers: bytes) -> None:
    """The policy never judges fewer From: fields than a mail reader could show."""
    with pytest.raises(SmtpReply) as refused:
        MessageFacts.from_headers(headers)
    assert refused.value.reply.code == 550


def test_folded_from_is_still_one_field() -> None:
    facts = MessageFacts.from_headers(b"From:\r\n  Alice <a@x.test>\r\nSubject: s")
    assert [str(a) for a in facts.from_addresses] == ["a@x.test"]
