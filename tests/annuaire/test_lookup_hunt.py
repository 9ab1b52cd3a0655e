"""Adversarial tests of the certificate lookup (session 5 hunt, annuaire/lookup.py).

Each test attacks one promise of ``annuaire.lookup``'s docstring: the certificate used
is valid for encryption and bound to the recipient, never another person's; directory
or DNS failures are never "no certificate"; filter values never escape the filter;
the caches never let one address's answer serve another.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from annuaire.dnscert import DnsCertFinder
from annuaire.errors import DirectoryUnavailable
from annuaire.ldif_backend import LdifDirectory
from annuaire.lookup import CertificateLookup, is_bound, mailbox_key
from annuaire.model import Entry, Mailbox
from annuaire.search import Candidates, PreparedQuery
from gateway.config import HostPort
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.smime.certnames import SMTP_UTF8_MAILBOX, certificate_addresses
from gateway.smime.types import CertStatus
from gateway.smime.validate import CertificateValidator
from tests.annuaire.conftest import der_of
from tests.annuaire.directories import RawRecord, raw_records, write_ldif
from tests.annuaire.samples import ATTRIBUTES
from tests.annuaire.test_lookup import (
    domain_certificate,
    hard_fail_validator,
    ldif_with,
    person,
)
from tests.peers.dns_server import DnsServer
from tests.peers.slapd import SUFFIX, SlapdInstance

DOMAIN = "chu-a.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(
        tmp_path_factory.mktemp("lookup-hunt") / "pki", users=(), servers=(), ec=True
    )


@pytest.fixture
def validator(pki: DevPki) -> CertificateValidator:
    return hard_fail_validator(pki)


def encryption_der(pki: DevPki, address: str, tmp_path: Path, name: str | None = None) -> bytes:
    path = tmp_path / f"{name or address}.crt"
    return der_of(pki.issue_user(address, "enc", path=path))


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


class Recording:
    """A directory that answers from a dict (exact keys) and records what it was asked."""

    def __init__(self, entries: dict[str, tuple[Entry, ...]]) -> None:
        self.entries = entries
        self.calls: list[str] = []

    @property
    def description(self) -> str:
        return "recording"

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        self.calls.append(address)
        return self.entries.get(address, ())

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        return Candidates(())

    async def close(self) -> None:
        pass


# ---------------------------------------------------------------- Unicode case folding
@pytest.mark.parametrize(
    ("owner", "asked"),
    [
        ("strasse@chu-a.test", "straße@chu-a.test"),  # casefold: ß -> ss
        ("kate@chu-a.test", "\u212aate@chu-a.test"),  # KELVIN SIGN folds to k
        ("file@chu-a.test", "\ufb01le@chu-a.test"),  # LATIN SMALL LIGATURE FI -> fi
    ],
)
async def test_a_unicode_lookalike_is_not_served_another_persons_certificate(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path, owner: str, asked: str
) -> None:
    """Another mailbox (RFC 6531 local parts are UTF-8) must not get ``owner``'s key:
    the annuaire compares as caseIgnoreIA5Match does (ASCII case only)."""
    owner_der = encryption_der(pki, owner, tmp_path)
    lookup = CertificateLookup(ldif_with(tmp_path, [person(owner, owner_der)]), validator)
    result = await lookup.lookup(asked)
    assert [certificate_addresses(c) for c in result.certificates] == []
    assert not result.found
    assert (await lookup.lookup(owner.upper())).found  # ASCII case still folds


async def test_the_cache_does_not_serve_ss_to_eszett(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    """Two mailboxes, two cache keys: the directory is asked for the address itself."""
    owner = "strasse@chu-a.test"
    directory = Recording({owner: (person(owner, encryption_der(pki, owner, tmp_path)),)})
    lookup = CertificateLookup(directory, validator)
    assert (await lookup.lookup(owner)).found
    other = await lookup.lookup("straße@chu-a.test")
    assert not other.found
    assert directory.calls[:2] == [owner, "straße@chu-a.test"]


def self_signed(*names: x509.GeneralName) -> x509.Certificate:
    """A throw-away certificate carrying ``names`` in its subjectAltName (binding only:
    ``is_bound`` does not validate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "binding probe")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .sign(key, hashes.SHA256())
    )


def test_binding_folds_ascii_case_only() -> None:
    """RFC 8398 SmtpUTF8Mailbox and rfc822Name: ASCII letters compare without case,
    nothing else is folded (``mailbox_key``)."""
    utf8 = x509.OtherName(
        x509.ObjectIdentifier(SMTP_UTF8_MAILBOX), core.UTF8String("josé@chu-a.test").dump()
    )
    certificate = self_signed(utf8, x509.RFC822Name("kate@chu-a.test"))
    assert is_bound(certificate, "josé@chu-a.test")
    assert is_bound(certificate, "JOSé@CHU-A.test")
    assert not is_bound(certificate, "jose@chu-a.test")
    assert is_bound(certificate, "KATE@chu-a.test")
    assert not is_bound(certificate, "\u212aate@chu-a.test")
    assert mailbox_key("Straße@CHU-A.test") == "straße@chu-a.test"


# ---------------------------------------------------------------- sub-addresses
async def test_a_mailbox_with_a_plus_is_not_served_the_base_mailbox_certificate(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    """The annuaire lists ``jean+paul@`` as a mailbox of its own (a ``+`` is atext,
    RFC 5322 §3.2.3): its certificate is the one to use, never ``jean@``'s."""
    jean = encryption_der(pki, "jean@chu-a.test", tmp_path)
    jean_paul = encryption_der(pki, "jean+paul@chu-a.test", tmp_path)
    lookup = CertificateLookup(
        ldif_with(
            tmp_path,
            [person("jean@chu-a.test", jean), person("jean+paul@chu-a.test", jean_paul)],
        ),
        validator,
    )
    plain = await lookup.lookup("jean@chu-a.test")
    assert [der(c) for c in plain.certificates] == [jean]
    result = await lookup.lookup("jean+paul@chu-a.test")
    used = [certificate_addresses(c) for c in result.certificates]
    assert used == [("jean+paul@chu-a.test",)]
    assert [der(c) for c in result.certificates] == [jean_paul]


# ---------------------------------------------------------------- binding (held)
def domain_record(domain: str, *certificates: bytes) -> RawRecord:
    """An organisation entry whose mail is the bare domain (written raw)."""
    return (
        f"uid={domain},ou=personnes,dc=annuaire,dc=test",
        {
            "objectClass": ["inetOrgPerson"],
            "uid": [domain],
            "cn": [f"Organisation {domain}"],
            "sn": [domain],
            "mail": [domain],
            "userCertificate;binary": list(certificates),
        },
    )


async def test_a_dns_name_certificate_in_a_personal_entry_is_not_bound(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    """An organisation certificate (dNSName only) filed under a person is not theirs."""
    org = domain_certificate(pki, DOMAIN, tmp_path)
    lookup = CertificateLookup(ldif_with(tmp_path, [person("alice@chu-a.test", org)]), validator)
    result = await lookup.lookup("alice@chu-a.test")
    assert not result.found
    assert [(c.source, c.validation.status) for c in result.candidates] == [
        ("annuaire:address", CertStatus.WRONG_USAGE)
    ]


async def test_entries_sharing_a_mail_give_only_certificates_bound_to_it(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    """Two entries list alice's mail; the second one holds bob's certificate (stale or
    hostile data): only a certificate naming alice is ever used."""
    alice = encryption_der(pki, "alice@chu-a.test", tmp_path)
    bob = encryption_der(pki, "bob@chu-a.test", tmp_path)
    entries = [
        person("alice@chu-a.test", alice, key="810000000101"),
        person("alice@chu-a.test", bob, key="810000000102"),
    ]
    lookup = CertificateLookup(ldif_with(tmp_path, entries), validator)
    result = await lookup.lookup("alice@chu-a.test")
    assert [der(c) for c in result.certificates] == [alice]
    assert len(result.candidates) == 2


async def test_a_revoked_newest_certificate_leaves_the_valid_older_one(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    older = der_of(
        pki.issue_user(
            "rose@chu-a.test",
            "enc",
            not_before=datetime.now(UTC) - timedelta(days=30),
            path=tmp_path / "older.crt",
        )
    )
    newest_path = pki.issue_user("rose@chu-a.test", "enc", path=tmp_path / "newest.crt")
    pki.revoke(newest_path)
    revoked_validator = CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes")], "hard-fail"
    )
    lookup = CertificateLookup(
        ldif_with(tmp_path, [person("rose@chu-a.test", der_of(newest_path), older)]),
        revoked_validator,
    )
    result = await lookup.lookup("rose@chu-a.test")
    assert [der(c) for c in result.certificates] == [older]
    assert result.candidates[-1].validation.status is CertStatus.REVOKED


async def test_a_person_with_a_revoked_certificate_gets_the_organisation_one_as_documented(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    """Documented order (module docstring: the first source that yields a *valid*
    certificate wins, address-bound before organisation-bound): the person's revoked
    certificate is reported among the candidates, the organisation's is the one used."""
    revoked_path = pki.issue_user("paul@chu-a.test", "enc", path=tmp_path / "paul.crt")
    pki.revoke(revoked_path)
    revoked_validator = CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes")], "hard-fail"
    )
    org = domain_certificate(pki, DOMAIN, tmp_path)
    records = [*raw_records([person("paul@chu-a.test", der_of(revoked_path))])]
    directory = LdifDirectory(
        write_ldif(tmp_path / "annuaire.ldif", [*records, domain_record(DOMAIN, org)]),
        ATTRIBUTES,
    )
    result = await CertificateLookup(directory, revoked_validator).lookup("paul@chu-a.test")
    assert [der(c) for c in result.certificates] == [org]
    assert [(c.source, c.validation.status) for c in result.candidates] == [
        ("annuaire:domain", CertStatus.VALID),
        ("annuaire:address", CertStatus.REVOKED),
    ]


# ---------------------------------------------------------------- DNS CERT (held)
async def test_dns_cert_records_of_another_person_are_not_used(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path, dns_server: DnsServer
) -> None:
    """Whoever publishes at alice's names (RFC 4398 form, Direct form, the domain)
    cannot make the lookup encrypt to a certificate that does not name alice."""
    claire = encryption_der(pki, "claire@chu-a.test", tmp_path)
    for name in ("alice\\.martin.chu-a.test", "alice.martin.chu-a.test", DOMAIN):
        dns_server.add_cert(name, claire)
    finder = DnsCertFinder([HostPort("127.0.0.1", dns_server.port)], timeout=3.0)
    lookup = CertificateLookup(ldif_with(tmp_path, []), validator, dns=finder)
    result = await lookup.lookup("alice.martin@chu-a.test")
    assert not result.found
    assert [c.source for c in result.candidates] == [
        "dns:alice\\.martin.chu-a.test.",
        "dns:alice.martin.chu-a.test.",
        "dns:chu-a.test.",
    ]
    assert {c.validation.status for c in result.candidates} == {CertStatus.WRONG_USAGE}


# ---------------------------------------------------------------- through slapd
FILTER_SIGNIFICANT = ("a*b", "x|y", "p=q", "r~s", "m&n", "!u", "{v}")


async def test_addresses_through_slapd_find_exactly_their_entry(
    validator: CertificateValidator,
    annuaire_slapd_factory: Callable[..., SlapdInstance],
) -> None:
    """Local parts holding RFC 4515-significant atext (``*``, ``|``, ``=``, ``~``,
    ``&``, ``!``) find their own entry and no other; RFC 6531 addresses (valid for the
    model, not IA5 for slapd's ``mail``) are "nothing found", never
    ``DirectoryUnavailable`` (the message would wait forever)."""
    from annuaire.ldap_backend import LdapDirectory

    entries = [person(f"{local}@chu-a.test") for local in FILTER_SIGNIFICANT]
    slapd = annuaire_slapd_factory([*entries, person("ab@chu-a.test")])
    directory = LdapDirectory([slapd.url], SUFFIX, ATTRIBUTES, pool_size=1)
    try:
        for entry in entries:
            found = await directory.find_by_mail(entry.addresses[0])
            assert [e.key for e in found] == [entry.key]
        assert await directory.find_by_mail("a*@chu-a.test") == ()
        lookup = CertificateLookup(directory, validator)
        for asked in ("josé@chu-a.test", "straße@chu-a.test", "用户@chu-a.test"):
            try:
                result = await lookup.lookup(asked)
            except DirectoryUnavailable as error:
                pytest.fail(f"{asked}: {error}")
            assert not result.found and result.entry is None
    finally:
        await directory.close()


async def test_a_truncated_directory_answer_is_never_no_certificate(
    pki: DevPki,
    validator: CertificateValidator,
    tmp_path: Path,
    slapd_factory: Callable[..., SlapdInstance],
) -> None:
    """A shared mailbox (MSSanté CAB: a cabinet's address on each practitioner's entry
    and on the cabinet's, which holds the certificate) on a replica whose anonymous
    size limit is lower than the number of entries: slapd answers sizeLimitExceeded
    with part of them. That partial answer must not become "no certificate" (the
    message would go to the route's fallback): the certificate, or an error."""
    from annuaire.ldap_backend import LdapDirectory
    from tests.annuaire.conftest import INDEXES, SCHEMA_FILE, write_entries_ldif

    cabinet = "cabinet@chu-a.test"
    practitioner = Entry(
        key="810000000201",
        kind="person",
        display_name="Docteur du cabinet",
        mailboxes=(Mailbox(cabinet, "CAB"),),
    )
    holder = Entry(
        key=cabinet,
        kind="structure",
        display_name="Cabinet",
        mailboxes=(Mailbox(cabinet, "CAB"),),
        certificates=(encryption_der(pki, cabinet, tmp_path),),
    )
    slapd = slapd_factory(
        extra_schemas=[SCHEMA_FILE],
        extra_config=(*INDEXES, "limits anonymous size=1"),
        ldif=[write_entries_ldif(tmp_path / "cabinet.ldif", [practitioner, holder])],
    )
    unlimited = LdapDirectory(
        [slapd.url],
        SUFFIX,
        ATTRIBUTES,
        bind_dn=slapd.root_dn,
        password=slapd.root_password,
        pool_size=1,
    )
    try:  # control: without the limit, the cabinet's certificate is found
        assert (await CertificateLookup(unlimited, validator).lookup(cabinet)).found
    finally:
        await unlimited.close()
    directory = LdapDirectory([slapd.url], SUFFIX, ATTRIBUTES, pool_size=1)
    try:
        result = await CertificateLookup(directory, validator).lookup(cabinet)
    except DirectoryUnavailable:
        return  # the message waits and retries: the promise holds
    finally:
        await directory.close()
    assert result.found, [e.key for e in ([result.entry] if result.entry else [])]


async def test_the_ldif_backend_does_not_fold_eszett_into_ss(tmp_path: Path) -> None:
    """Backend contract: ``find_by_mail`` compares as caseIgnoreIA5Match (ASCII case);
    slapd answers nothing for ``straße@``, the LDIF index answers ``strasse@``'s entry
    (``model.address_key`` is ``str.casefold``)."""
    directory = ldif_with(tmp_path, [person("strasse@chu-a.test")])
    assert await directory.find_by_mail("STRASSE@chu-a.test") != ()
    assert await directory.find_by_mail("straße@chu-a.test") == ()
