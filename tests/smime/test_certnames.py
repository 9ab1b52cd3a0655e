"""``gateway.smime.certnames``: which names bind a certificate (RFC 8550 §3, RFC 5280
§4.2.1.6, RFC 8398) — the rule the verifier, the key store and the annuaire share."""

from __future__ import annotations

import datetime

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from annuaire.lookup import is_bound
from gateway.smime.certnames import (
    SMTP_UTF8_MAILBOX,
    addresses_match,
    certificate_addresses,
    certificate_dns_names,
    san_addresses,
)

KEY = ec.generate_private_key(ec.SECP256R1())


def _certificate(subject_email: str | None, *names: x509.GeneralName) -> x509.Certificate:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, "Test")]
    if subject_email is not None:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    name = x509.Name(attributes)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(KEY, hashes.SHA256())


def test_the_subject_email_counts_only_without_a_san_address() -> None:
    legacy = _certificate("Old.Style@chu-a.test")
    both = _certificate("other@chu-a.test", x509.RFC822Name("alice@chu-a.test"))
    assert certificate_addresses(legacy) == ("Old.Style@chu-a.test",)
    assert certificate_addresses(both) == ("alice@chu-a.test",)
    assert san_addresses(legacy) == ()
    assert not is_bound(both, "other@chu-a.test")
    assert is_bound(both, "Alice@CHU-A.test")  # the annuaire compares case-folded


def test_smtputf8_mailbox_is_an_address() -> None:
    value = core.UTF8String("médecin@chu-a.test").dump()
    certificate = _certificate(
        None, x509.OtherName(x509.ObjectIdentifier(SMTP_UTF8_MAILBOX), value)
    )
    assert san_addresses(certificate) == ("médecin@chu-a.test",)
    assert is_bound(certificate, "médecin@chu-a.test")


def test_a_domain_certificate_is_bound_by_its_dns_name() -> None:
    certificate = _certificate(None, x509.DNSName("Clinique-B.test."))
    assert certificate_dns_names(certificate) == ("clinique-b.test",)
    assert is_bound(certificate, "clinique-b.test")
    assert not is_bound(certificate, "someone@clinique-b.test")


def test_addresses_compare_local_part_exact_domain_folded() -> None:
    assert addresses_match("a@Example.TEST.", "a@example.test")
    assert not addresses_match("A@example.test", "a@example.test")
    assert not addresses_match("not-an-address", "not-an-address")
