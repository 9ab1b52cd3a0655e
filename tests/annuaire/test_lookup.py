"""Certificate lookup: sources in order, validation by the real validator, binding,
ordering, caches, DNS CERT (with the loopback DNS server) and failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from annuaire.backend import Directory
from annuaire.dnscert import DnsCertFinder, address_names
from annuaire.errors import DirectoryUnavailable
from annuaire.ldif_backend import LdifDirectory
from annuaire.lookup import CertificateLookup, certificate_purpose, is_bound
from annuaire.model import Entry, Mailbox
from annuaire.search import Candidates, PreparedQuery
from gateway.config import HostPort
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.smime.types import CertStatus
from gateway.smime.validate import CertificateValidator
from tests.annuaire.conftest import der_of
from tests.annuaire.directories import raw_records, write_ldif
from tests.annuaire.samples import ATTRIBUTES
from tests.peers.dns_server import DnsServer
from tests.peers.ports import free_port

ALICE = "alice.martin@chu-a.test"
CLAIRE = "claire.durand@clinique-b.test"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A P-256 PKI of this module's own (tests revoke certificates in it)."""
    return init_dev_pki(
        tmp_path_factory.mktemp("lookup") / "pki", users=(ALICE, CLAIRE), servers=(), ec=True
    )


def hard_fail_validator(pki: DevPki) -> CertificateValidator:
    """The dev PKI's anchors and CRLs, revocation ``hard-fail`` (shared by lookup tests)."""
    return CertificateValidator.from_files(
        [pki.root_cert],
        [pki.intermediates],
        [pki.crl("personnes"), pki.crl("serveurs")],
        "hard-fail",
    )


@pytest.fixture
def validator(pki: DevPki) -> CertificateValidator:
    return hard_fail_validator(pki)


def person(address: str, *certificates: bytes, key: str | None = None) -> Entry:
    return Entry(
        key=key or address,
        kind="person",
        display_name=address.split("@")[0],
        mailboxes=(Mailbox(address),),
        certificates=certificates,
    )


def domain_entry(domain: str, *certificates: bytes) -> Entry:
    return Entry(
        key=domain,
        kind="structure",
        display_name=f"Organisation {domain}",
        mailboxes=(),
        certificates=certificates,
    )


class Counting:
    """A directory wrapper that counts calls and can be made to fail."""

    def __init__(self, inner: Directory) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.failing = False

    @property
    def description(self) -> str:
        return self.inner.description

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        self.calls.append(address)
        if self.failing:
            raise DirectoryUnavailable("annuaire: down for the test")
        await asyncio.sleep(0)
        return await self.inner.find_by_mail(address)

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        return await self.inner.search(query, limit)

    async def close(self) -> None:
        await self.inner.close()


def ldif_with(
    tmp_path: Path,
    entries: Sequence[Entry],
    extra: Sequence[tuple[str, dict[str, list[str | bytes]]]] = (),
) -> LdifDirectory:
    return LdifDirectory(
        write_ldif(tmp_path / "annuaire.ldif", [*raw_records(entries), *extra]), ATTRIBUTES
    )


def domain_record(domain: str, *certificates: bytes) -> tuple[str, dict[str, list[str | bytes]]]:
    """A structure entry whose mail is the bare domain (not a valid mailbox, so written raw)."""
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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the annuaire sources
async def test_found_at_the_address_entry(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    der = der_of(pki.user_cert(ALICE, "enc"))
    lookup = CertificateLookup(ldif_with(tmp_path, [person(ALICE, der)]), validator)
    for asked in (ALICE, "alice.martin+cardio@chu-a.test", "Alice.Martin@CHU-A.test"):
        result = await lookup.lookup(asked)
        assert result.found, asked
        assert result.address == asked.lower()  # a tagged address keeps its tag
        assert [c.source for c in result.candidates] == ["annuaire:address"]
        assert result.certificates == (x509.load_der_x509_certificate(der),)
        assert result.entry is not None and result.entry.key == ALICE


async def test_candidates_are_ordered_and_explained(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    older = der_of(
        pki.issue_user(ALICE, "enc", not_before=NOW - timedelta(days=30), path=tmp_path / "old.crt")
    )
    newer = der_of(pki.issue_user(ALICE, "enc", path=tmp_path / "new.crt"))
    expired = der_of(
        pki.issue_user(
            ALICE,
            "enc",
            not_before=NOW - timedelta(days=60),
            not_after=NOW - timedelta(days=1),
            path=tmp_path / "exp.crt",
        )
    )
    signing = der_of(pki.user_cert(ALICE, "sign"))
    elsewhere = der_of(pki.user_cert(CLAIRE, "enc"))  # valid, but Claire's
    lookup = CertificateLookup(
        ldif_with(tmp_path, [person(ALICE, expired, signing, older, elsewhere, newer)]), validator
    )
    result = await lookup.lookup(ALICE)
    by_der = {c.certificate.public_bytes(_der()): c for c in result.candidates}
    assert [c.public_bytes(_der()) for c in result.certificates] == [newer, older]
    assert by_der[expired].validation.status is CertStatus.EXPIRED
    assert by_der[signing].validation.status is CertStatus.WRONG_USAGE
    assert by_der[elsewhere].validation.status is CertStatus.WRONG_USAGE
    assert by_der[elsewhere].validation.reason == f"not bound to {ALICE}"
    assert certificate_purpose(by_der[signing].certificate) == "sign"
    assert certificate_purpose(by_der[newer].certificate) == "encrypt"
    assert [c.valid for c in result.candidates] == [True, True, False, False, False]


def _der() -> object:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


async def test_revoked_and_untrusted_certificates_are_not_used(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    revoked_path = pki.issue_user(ALICE, "enc", path=tmp_path / "revoked.crt")
    pki.revoke(revoked_path)
    other = init_dev_pki(tmp_path / "other", users=(ALICE,), servers=(), ec=True)
    lookup = CertificateLookup(
        ldif_with(
            tmp_path, [person(ALICE, der_of(revoked_path), der_of(other.user_cert(ALICE, "enc")))]
        ),
        validator,
    )
    result = await lookup.lookup(ALICE)
    assert not result.found
    assert sorted(c.validation.status.value for c in result.candidates) == ["revoked", "untrusted"]


async def test_a_malformed_certificate_is_skipped_with_a_warning(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = der_of(pki.user_cert(ALICE, "enc"))
    lookup = CertificateLookup(
        ldif_with(tmp_path, [person(ALICE, b"\x30\x03junk", good)]), validator
    )
    with caplog.at_level(logging.WARNING, logger="missive.annuaire"):
        result = await lookup.lookup(ALICE)
    assert result.found and len(result.candidates) == 1
    assert len(result.skipped) == 1 and "not a certificate" in result.skipped[0]
    assert "annuaire.certificate.malformed" in caplog.messages


def domain_certificate(pki: DevPki, domain: str, tmp_path: Path) -> bytes:
    """A Direct-style organisation certificate: dNSName = the domain, for encryption."""
    path = pki.issue_server(
        domain,
        key_usage=["keyAgreement"],
        eku=["emailProtection"],
        loopback=False,
        ca="personnes",
        path=tmp_path / f"{domain}.crt",
    )
    return der_of(path)


async def test_the_domain_entry_comes_next(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    domain_der = domain_certificate(pki, "clinique-b.test", tmp_path)
    assert is_bound(x509.load_der_x509_certificate(domain_der), "clinique-b.test")
    claire_signing = der_of(pki.user_cert(CLAIRE, "sign"))
    lookup = CertificateLookup(
        ldif_with(
            tmp_path,
            [person(CLAIRE, claire_signing)],
            [domain_record("clinique-b.test", domain_der)],
        ),
        validator,
    )
    result = await lookup.lookup(CLAIRE)
    assert result.found
    assert [c.source for c in result.candidates] == ["annuaire:domain", "annuaire:address"]
    assert result.entry is not None and result.entry.key == CLAIRE  # the address entry
    unknown = await lookup.lookup("secretariat@clinique-b.test")
    assert unknown.found and unknown.entry is not None and unknown.entry.key == "clinique-b.test"


# ---------------------------------------------------------------- caches
async def test_positive_and_negative_caches(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    counting = Counting(ldif_with(tmp_path, [person(ALICE, der_of(pki.user_cert(ALICE, "enc")))]))
    clock = Clock()
    lookup = CertificateLookup(
        counting,
        validator,
        cache_ttl=timedelta(seconds=300),
        negative_cache_ttl=timedelta(seconds=60),
        clock=clock,
    )
    assert (await lookup.lookup(ALICE)).found
    assert (await lookup.lookup(ALICE)).found
    assert counting.calls == [ALICE]  # the second one came from the cache
    tagged = "alice.martin+x@chu-a.test"  # its own entry first, then the base mailbox
    assert (await lookup.lookup("ALICE.martin+x@chu-a.test")).found
    assert (await lookup.lookup(tagged)).found
    assert counting.calls == [ALICE, tagged, ALICE]
    assert not (await lookup.lookup("nobody@chu-a.test")).found
    assert not (await lookup.lookup("nobody@chu-a.test")).found
    assert counting.calls[3:] == ["nobody@chu-a.test", "chu-a.test"]
    clock.now += 61  # the negative answer expired, the positive one not
    await lookup.lookup("nobody@chu-a.test")
    await lookup.lookup(ALICE)
    assert counting.calls[5:] == ["nobody@chu-a.test", "chu-a.test"]
    clock.now += 300
    await lookup.lookup(ALICE)
    assert counting.calls[7:] == [ALICE]
    lookup.invalidate(ALICE)
    await lookup.lookup(ALICE)
    assert counting.calls[8:] == [ALICE]


async def test_positive_cache_ends_with_the_certificate(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    short = pki.issue_user(
        ALICE, "enc", not_after=NOW + timedelta(seconds=120), path=tmp_path / "s.crt"
    )
    counting = Counting(ldif_with(tmp_path, [person(ALICE, der_of(short))]))
    clock = Clock()
    lookup = CertificateLookup(counting, validator, cache_ttl=timedelta(hours=1), clock=clock)
    assert (await lookup.lookup(ALICE)).found
    clock.now += 200  # beyond notAfter, well within cache_ttl
    await lookup.lookup(ALICE)
    assert counting.calls == [ALICE, ALICE]


async def test_zero_ttl_disables_the_cache(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    counting = Counting(ldif_with(tmp_path, [person(ALICE, der_of(pki.user_cert(ALICE, "enc")))]))
    lookup = CertificateLookup(
        counting, validator, cache_ttl=timedelta(0), negative_cache_ttl=timedelta(0)
    )
    await lookup.lookup(ALICE)
    await lookup.lookup(ALICE)
    assert counting.calls == [ALICE, ALICE]


async def test_concurrent_lookups_share_one_resolution(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    counting = Counting(ldif_with(tmp_path, [person(ALICE, der_of(pki.user_cert(ALICE, "enc")))]))
    lookup = CertificateLookup(counting, validator)
    results = await asyncio.gather(*(lookup.lookup(ALICE) for _ in range(20)))
    assert all(r.found for r in results)
    assert counting.calls == [ALICE]


async def test_an_unreachable_directory_is_an_error_never_cached(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    counting = Counting(ldif_with(tmp_path, [person(ALICE, der_of(pki.user_cert(ALICE, "enc")))]))
    lookup = CertificateLookup(counting, validator)
    counting.failing = True
    for _ in range(2):
        with pytest.raises(DirectoryUnavailable):
            await lookup.lookup(ALICE)
    counting.failing = False
    assert (await lookup.lookup(ALICE)).found
    assert len(counting.calls) == 3


async def test_bad_addresses_find_nothing_and_raise_nothing(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    counting = Counting(ldif_with(tmp_path, [person(ALICE, der_of(pki.user_cert(ALICE, "enc")))]))
    lookup = CertificateLookup(counting, validator)
    for probe in (
        "*",
        "*@chu-a.test",
        "*)(mail=*",
        ALICE + "\x00",
        "a" * 10240,
        "caf\udce9@chu-a.test",
        "\\",
        "",
        "@",
        ALICE + ")(uid=*",
    ):
        result = await lookup.lookup(probe)
        assert not result.found and result.candidates == (), repr(probe[:30])
    assert all("\x00" not in call and len(call) < 300 for call in counting.calls)


# ---------------------------------------------------------------- DNS CERT
def test_address_names() -> None:
    rfc, direct = address_names("alice.martin@chu-a.test")
    assert rfc.labels[0] == b"alice.martin" and rfc.to_text() == "alice\\.martin.chu-a.test."
    assert direct.to_text() == "alice.martin.chu-a.test."
    assert [n.to_text() for n in address_names("bob@chu-a.test")] == ["bob.chu-a.test."]
    assert address_names("x" * 64 + "@chu-a.test") == []


@pytest.fixture
def dns(dns_server: DnsServer) -> DnsCertFinder:
    return DnsCertFinder([HostPort("127.0.0.1", dns_server.port)], timeout=3.0)


async def test_dns_cert_after_the_annuaire(
    pki: DevPki,
    validator: CertificateValidator,
    tmp_path: Path,
    dns_server: DnsServer,
    dns: DnsCertFinder,
) -> None:
    alice = der_of(pki.user_cert(ALICE, "enc"))
    dns_server.add_cert("alice\\.martin.chu-a.test", alice)
    lookup = CertificateLookup(ldif_with(tmp_path, []), validator, dns=dns)
    result = await lookup.lookup(ALICE)
    assert result.found and result.entry is None
    assert [c.source for c in result.candidates] == ["dns:alice\\.martin.chu-a.test."]
    cert_queries = [q for q in dns_server.queries if q.rdtype == "CERT"]
    assert [(q.transport, q.truncated) for q in cert_queries][:2] == [("udp", True), ("tcp", False)]


async def test_dns_cert_direct_form_and_domain(
    pki: DevPki,
    validator: CertificateValidator,
    tmp_path: Path,
    dns_server: DnsServer,
    dns: DnsCertFinder,
) -> None:
    dns_server.add_cert("claire.durand.clinique-b.test", der_of(pki.user_cert(CLAIRE, "enc")))
    dns_server.add_cert("chu-a.test", domain_certificate(pki, "chu-a.test", tmp_path))
    dns_server.add(
        "chu-a.test", "CERT", "IPKIX 0 0 aHR0cDovL2V4YW1wbGUudGVzdC9jZXJ0"
    )  # a URL: ignored
    lookup = CertificateLookup(ldif_with(tmp_path, []), validator, dns=dns)
    claire = await lookup.lookup(CLAIRE)
    assert [c.source for c in claire.candidates] == ["dns:claire.durand.clinique-b.test."]
    assert claire.found
    alice = await lookup.lookup(ALICE)
    assert alice.found and [c.source for c in alice.candidates] == ["dns:chu-a.test."]


async def test_dns_is_not_asked_when_the_annuaire_answers(
    pki: DevPki,
    validator: CertificateValidator,
    tmp_path: Path,
    dns_server: DnsServer,
    dns: DnsCertFinder,
) -> None:
    lookup = CertificateLookup(
        ldif_with(tmp_path, [person(ALICE, der_of(pki.user_cert(ALICE, "enc")))]),
        validator,
        dns=dns,
    )
    assert (await lookup.lookup(ALICE)).found
    assert dns_server.queries == []


async def test_failing_dns_is_an_error(
    pki: DevPki, validator: CertificateValidator, tmp_path: Path
) -> None:
    silent = DnsCertFinder([HostPort("127.0.0.1", free_port())], timeout=1.0)
    lookup = CertificateLookup(ldif_with(tmp_path, []), validator, dns=silent)
    with pytest.raises(DirectoryUnavailable, match="DNS CERT"):
        await lookup.lookup(ALICE)


# ---------------------------------------------------------------- with slapd
async def test_lookup_through_slapd(
    pki: DevPki, validator: CertificateValidator, annuaire_slapd_factory: Callable[..., object]
) -> None:
    from annuaire.ldap_backend import LdapDirectory
    from tests.peers.slapd import SUFFIX, SlapdInstance

    slapd = annuaire_slapd_factory(
        [person(ALICE, der_of(pki.user_cert(ALICE, "enc")), key="810000000009")]
    )
    assert isinstance(slapd, SlapdInstance)
    directory = LdapDirectory([slapd.url], SUFFIX, ATTRIBUTES, pool_size=1)
    try:
        result = await CertificateLookup(directory, validator).lookup("alice.martin+x@chu-a.test")
        assert result.found and result.entry is not None and result.entry.key == "810000000009"
    finally:
        await directory.close()


def _unused(_: Iterator[None]) -> None:  # keeps the typing imports honest
    pass


async def test_a_malformed_certificate_in_slapd_is_skipped(
    pki: DevPki, validator: CertificateValidator, annuaire_slapd_factory: Callable[..., object]
) -> None:
    """slapd checks userCertificate's syntax but not userSMIMECertificate's (binary)."""
    from annuaire.ldap_backend import LdapDirectory
    from tests.peers.slapd import SUFFIX, SlapdInstance

    slapd = annuaire_slapd_factory([person(ALICE, der_of(pki.user_cert(ALICE, "enc")))])
    assert isinstance(slapd, SlapdInstance)
    connection = slapd.connect()
    try:
        ok, result, _, _ = connection.modify(
            f"uid={ALICE},ou=personnes,dc=annuaire,dc=test",
            {"userSMIMECertificate": [("MODIFY_ADD", [b"\x30\x03not-a-certificate"])]},
        )
        assert ok, result
    finally:
        connection.unbind()
    directory = LdapDirectory([slapd.url], SUFFIX, ATTRIBUTES, pool_size=1)
    try:
        result = await CertificateLookup(directory, validator).lookup(ALICE)
    finally:
        await directory.close()
    assert result.found and len(result.candidates) == 1
    assert len(result.skipped) == 1
