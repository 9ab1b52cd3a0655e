"""The mail addresses and host names a certificate is bound to, and how addresses compare.

Role: the one place that reads the names of a certificate for binding decisions — the
verifier binding a signer to From (``gateway.smime.verify``), the key store finding a
key by address (``gateway.smime.keystore``), the annuaire checking that a recipient's
certificate names the address or domain it was found for (``annuaire.lookup``), and
routing's address comparisons.

Rules (RFC 8550 §3, RFC 5280 §4.2.1.6, RFC 8398):

- ``san_addresses``: the subjectAltName's rfc822Name and SmtpUTF8Mailbox values;
- ``certificate_addresses``: those, or — only when the subjectAltName has none — the
  subject's legacy emailAddress attributes (RFC 5280 §4.2.1.6: a CA puts mail
  addresses in the subjectAltName; older certificates carry them in the subject). A
  subject emailAddress beside a subjectAltName address is not a binding: it is not what
  the CA is required to have checked;
- ``certificate_dns_names``: the subjectAltName's dNSName values, lower case, without a
  trailing dot (an organisation-level certificate bound to a domain);
- ``addresses_match``: local part exact, domain case-insensitive (RFC 8550 §3; RFC 5321
  §2.4 leaves the local part's case to the receiving host).

Robustness: a malformed subjectAltName or subject reads as "no names" (never an
exception): a certificate that cannot be read names nothing, so it is bound to nothing.

Trust level: public certificates only; no validation here (``gateway.smime.validate``).
"""

from __future__ import annotations

from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import NameOID

SMTP_UTF8_MAILBOX = "1.3.6.1.5.5.7.8.9"  # id-on-SmtpUTF8Mailbox, RFC 8398 §3


def san_addresses(certificate: x509.Certificate) -> tuple[str, ...]:
    """The subjectAltName's mail addresses: rfc822Name, then SmtpUTF8Mailbox."""
    san = _subject_alt_name(certificate)
    if san is None:
        return ()
    found = list(san.get_values_for_type(x509.RFC822Name))
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id.dotted_string == SMTP_UTF8_MAILBOX:
            try:
                found.append(str(core.UTF8String.load(other.value).native))
            except ValueError:
                continue
    return tuple(dict.fromkeys(found))


def certificate_addresses(certificate: x509.Certificate) -> tuple[str, ...]:
    """``san_addresses``, or the subject's emailAddress values when there are none."""
    found = san_addresses(certificate)
    if found:
        return found
    try:
        attributes = certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    except ValueError:
        return ()
    return tuple(dict.fromkeys(str(attribute.value) for attribute in attributes))


def certificate_dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The subjectAltName's dNSName values, lower case, no trailing dot."""
    san = _subject_alt_name(certificate)
    if san is None:
        return ()
    names = (name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName))
    return tuple(dict.fromkeys(names))


def split_address(address: str) -> tuple[str, str] | None:
    """(local part, domain in lower case without a trailing dot); None if no address."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        return None
    return local, domain.rstrip(".").lower()


def addresses_match(left: str, right: str) -> bool:
    """RFC 8550 §3 comparison: local part exact, domain case-insensitive."""
    a, b = split_address(left), split_address(right)
    return a is not None and a == b


def _subject_alt_name(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError, TypeError):
        return None
