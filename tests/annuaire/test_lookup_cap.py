"""The bounds of one certificate lookup (``annuaire.lookup``, module docstring, Bounds).

A directory entry or a DNS answer holding many certificates must not make the secure
agent parse and validate them all: beyond ``MAX_CANDIDATES`` distinct values (all
sources of one lookup together) the lookup raises ``TooManyCertificates``, a
``DirectoryUnavailable`` (the message waits), before parsing any value of that source;
a value longer than ``MAX_CERTIFICATE_BYTES`` is skipped unparsed. The entries are real:
certificates issued by the test PKI's CA, written as LDIF, loaded into slapd, served
by the loopback DNS server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

import gateway.cli
from annuaire.backend import Directory
from annuaire.dnscert import DnsCertFinder
from annuaire.errors import DirectoryUnavailable
from annuaire.ldap_backend import LdapDirectory
from annuaire.lookup import (
    MAX_CANDIDATES,
    MAX_CERTIFICATE_BYTES,
    CertificateLookup,
    TooManyCertificates,
)
from annuaire.mapping import entry_dn, entry_to_attributes
from annuaire.model import Entry
from annuaire.search import Candidates, PreparedQuery
from gateway.config import HostPort
from gateway.pki.dev import DevPki, init_dev_pki, load_dev_pki
from gateway.smime.types import ChainValidator, Purpose, ValidationResult
from tests.annuaire.conftest import der_of
from tests.annuaire.directories import write_ldif
from tests.annuaire.samples import ATTRIBUTES
from tests.annuaire.test_cli import site
from tests.annuaire.test_lookup import (
    Counting,
    domain_certificate,
    domain_record,
    hard_fail_validator,
    ldif_with,
    person,
)
from tests.peers.dns_server import DnsServer
from tests.peers.slapd import SUFFIX, SlapdInstance

ALICE = "alice.martin@chu-a.test"
DOMAIN = "chu-a.test"
BASE_DN = f"ou=personnes,{SUFFIX}"
MANY = 200  # "thousands" in the wild; 200 is enough to be far past the limit, and quick
__all__ = ["site"]  # the command line's fixture, shared with test_cli


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_dev_pki(
        tmp_path_factory.mktemp("lookup-cap") / "pki", users=(ALICE,), servers=(), ec=True
    )


class CountingValidator:
    """The real validator, counting each certificate it is asked to validate."""

    def __init__(self, inner: ChainValidator) -> None:
        self.inner = inner
        self.calls = 0

    def validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        purpose: Purpose = Purpose.SMIME_SIGN,
        at: datetime | None = None,
    ) -> ValidationResult:
        self.calls += 1
        return self.inner.validate(certificate, untrusted, purpose, at)


@pytest.fixture
def validator(pki: DevPki) -> CountingValidator:
    return CountingValidator(hard_fail_validator(pki))


def ca_key(pki: DevPki, name: str) -> CertificateIssuerPrivateKeyTypes:
    key = serialization.load_pem_private_key(pki.ca_key(name).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def reissued(
    pki: DevPki,
    template: Path,
    count: int,
    *,
    ca: str = "personnes",
    extra: x509.ExtensionType | None = None,
) -> list[bytes]:
    """``count`` distinct certificates: ``template`` signed again by its CA with fresh
    serial numbers (same subject, key and extensions, so each is as valid as it is),
    plus ``extra`` when given. The shape a directory entry full of copies has."""
    certificate = x509.load_pem_x509_certificates(template.read_bytes())[0]
    key = ca_key(pki, ca)
    copies: list[bytes] = []
    for _ in range(count):
        builder = (
            x509.CertificateBuilder()
            .subject_name(certificate.subject)
            .issuer_name(certificate.issuer)
            .public_key(certificate.public_key())
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(certificate.not_valid_before_utc)
            .not_valid_after(certificate.not_valid_after_utc)
        )
        for extension in certificate.extensions:
            builder = builder.add_extension(extension.value, extension.critical)
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        copies.append(builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER))
    return copies


def fields_of(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    return [dict(getattr(r, "fields", {})) for r in caplog.records if r.getMessage() == event]


# ---------------------------------------------------------------- the count, LDIF
async def test_an_entry_at_the_limit_is_examined_in_full(
    pki: DevPki, validator: CountingValidator, tmp_path: Path
) -> None:
    copies = reissued(pki, pki.user_cert(ALICE, "enc"), MAX_CANDIDATES)
    lookup = CertificateLookup(ldif_with(tmp_path, [person(ALICE, *copies)]), validator)
    result = await lookup.lookup(ALICE)
    assert result.found and len(result.certificates) == MAX_CANDIDATES
    assert validator.calls == MAX_CANDIDATES


async def test_an_entry_beyond_the_limit_makes_the_lookup_unavailable(
    pki: DevPki, validator: CountingValidator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copies = reissued(pki, pki.user_cert(ALICE, "enc"), MANY)
    lookup = CertificateLookup(ldif_with(tmp_path, [person(ALICE, *copies)]), validator)
    with caplog.at_level(logging.WARNING, logger="missive.annuaire"):
        with pytest.raises(TooManyCertificates) as raised:
            await lookup.lookup(ALICE)
    assert isinstance(raised.value, DirectoryUnavailable)  # the agent defers the message
    assert validator.calls == 0  # nothing parsed or validated
    assert (raised.value.count, raised.value.limit) == (MANY, MAX_CANDIDATES)
    assert raised.value.source == "annuaire:address"
    assert f"{MANY} certificate values for {ALICE}" in str(raised.value)
    assert f"limit of {MAX_CANDIDATES} per lookup" in str(raised.value)
    (logged,) = fields_of(caplog, "annuaire.lookup.too_many_certificates")
    assert logged == {
        "address": ALICE,
        "source": "annuaire:address",
        "entry": ALICE,
        "values": MANY,
        "total": MANY,
        "limit": MAX_CANDIDATES,
    }
    assert "annuaire.certificate.malformed" not in caplog.messages


async def test_the_limit_counts_every_source_of_one_lookup(
    pki: DevPki, validator: CountingValidator, tmp_path: Path
) -> None:
    """10 signing certificates at the address (none usable), then 10 domain certificates:
    each source is under the limit, the lookup is not."""
    signing = reissued(pki, pki.user_cert(ALICE, "sign"), 10)
    domain = domain_certificate(pki, DOMAIN, tmp_path)
    domain_copies = reissued(pki, _pem(tmp_path, domain), 10)
    lookup = CertificateLookup(
        ldif_with(tmp_path, [person(ALICE, *signing)], [domain_record(DOMAIN, *domain_copies)]),
        validator,
    )
    with pytest.raises(TooManyCertificates) as raised:
        await lookup.lookup(ALICE)
    assert (raised.value.source, raised.value.count) == ("annuaire:domain", 20)
    assert validator.calls == 10  # the address entry's, not the domain's


def _pem(tmp_path: Path, der: bytes) -> Path:
    path = tmp_path / "template.pem"
    certificate = x509.load_der_x509_certificate(der)
    path.write_bytes(certificate.public_bytes(Encoding.PEM))
    return path


class Static:
    """A directory answering one address with entries given as they are (the model
    allows repeated certificate values; the backends drop them, this one does not)."""

    def __init__(self, address: str, *entries: Entry) -> None:
        self.address = address
        self.entries = entries

    @property
    def description(self) -> str:
        return "static"

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        await asyncio.sleep(0)
        return self.entries if address == self.address else ()

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        return Candidates((), False)

    async def close(self) -> None:
        pass


async def test_repeated_values_count_once(pki: DevPki, validator: CountingValidator) -> None:
    der = der_of(pki.user_cert(ALICE, "enc"))
    directory: Directory = Static(ALICE, person(ALICE, *([der] * 1000)))
    result = await CertificateLookup(directory, validator).lookup(ALICE)
    assert result.found and len(result.candidates) == 1 and validator.calls == 1


async def test_beyond_the_limit_is_never_cached(
    pki: DevPki, validator: CountingValidator, tmp_path: Path
) -> None:
    copies = reissued(pki, pki.user_cert(ALICE, "enc"), MAX_CANDIDATES + 1)
    counting = Counting(ldif_with(tmp_path, [person(ALICE, *copies)]))
    lookup = CertificateLookup(counting, validator)
    for _ in range(2):
        with pytest.raises(TooManyCertificates):
            await lookup.lookup(ALICE)
    assert counting.calls == [ALICE, ALICE] and validator.calls == 0


def test_the_limits_must_be_positive(validator: CountingValidator, tmp_path: Path) -> None:
    directory = ldif_with(tmp_path, [])
    for bad in ({"max_candidates": 0}, {"max_certificate_bytes": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            CertificateLookup(directory, validator, **bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the size of one value
async def test_an_oversized_certificate_is_skipped_unparsed(
    pki: DevPki, validator: CountingValidator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate valid in every respect but its size (a 40 KiB private extension)."""
    padding = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x04\x82\xa0\x00" + bytes(0xA000)
    )
    (big,) = reissued(pki, pki.user_cert(ALICE, "enc"), 1, extra=padding)
    assert len(big) > MAX_CERTIFICATE_BYTES
    control = hard_fail_validator(pki).validate(
        x509.load_der_x509_certificate(big), purpose=Purpose.SMIME_ENCRYPT
    )
    assert control.valid, control  # refused for its size only
    good = der_of(pki.user_cert(ALICE, "enc"))
    lookup = CertificateLookup(ldif_with(tmp_path, [person(ALICE, big, good)]), validator)
    with caplog.at_level(logging.WARNING, logger="missive.annuaire"):
        result = await lookup.lookup(ALICE)
    assert result.found and [
        c.certificate.public_bytes(Encoding.DER) for c in result.candidates
    ] == [good]
    assert validator.calls == 1
    (reason,) = result.skipped
    assert f"{len(big)} bytes, longer than the {MAX_CERTIFICATE_BYTES}" in reason
    (logged,) = fields_of(caplog, "annuaire.certificate.oversized")
    assert logged == {
        "source": "annuaire:address",
        "entry": ALICE,
        "size": len(big),
        "limit": MAX_CERTIFICATE_BYTES,
    }


# ---------------------------------------------------------------- real peers
async def test_a_slapd_entry_beyond_the_limit(
    pki: DevPki,
    validator: CountingValidator,
    annuaire_slapd_factory: Callable[..., SlapdInstance],
) -> None:
    copies = reissued(pki, pki.user_cert(ALICE, "enc"), MANY)
    slapd = annuaire_slapd_factory([person(ALICE, *copies, key="810000000009")])
    directory = LdapDirectory([slapd.url], SUFFIX, ATTRIBUTES, pool_size=1)
    try:
        (entry,) = await directory.find_by_mail(ALICE)  # slapd holds every value
        assert len(entry.certificates) == MANY
        with pytest.raises(TooManyCertificates) as raised:
            await CertificateLookup(directory, validator).lookup(ALICE)
    finally:
        await directory.close()
    assert (raised.value.count, raised.value.source) == (MANY, "annuaire:address")
    assert validator.calls == 0


async def test_a_dns_cert_answer_beyond_the_limit(
    pki: DevPki, validator: CountingValidator, tmp_path: Path, dns_server: DnsServer
) -> None:
    count = 40  # about 25 KiB: over TCP after the truncated UDP answer
    for der in reissued(pki, pki.user_cert(ALICE, "enc"), count):
        dns_server.add_cert("alice\\.martin.chu-a.test", der)
    dns = DnsCertFinder([HostPort("127.0.0.1", dns_server.port)], timeout=3.0)
    lookup = CertificateLookup(ldif_with(tmp_path, []), validator, dns=dns)
    with pytest.raises(TooManyCertificates) as raised:
        await lookup.lookup(ALICE)
    assert (raised.value.count, raised.value.source) == (count, "dns:alice\\.martin.chu-a.test.")
    assert validator.calls == 0
    assert any(q.transport == "tcp" for q in dns_server.queries)


def test_the_command_line_reports_the_limit(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``missive annuaire lookup``: a clear error line and status 2, no traceback."""
    var = site / "var"
    site_pki = load_dev_pki(var / "pki")
    copies = reissued(site_pki, site_pki.user_cert(ALICE, "enc"), MAX_CANDIDATES + 4)
    entry = person(ALICE, *copies, key="899900000001")
    write_ldif(
        var / "annuaire.ldif", [(entry_dn(entry, BASE_DN), entry_to_attributes(entry, ATTRIBUTES))]
    )
    status = gateway.cli.main(
        ["annuaire", "lookup", ALICE, "--config", str(site / "conf" / "missive.toml")]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert f"{MAX_CANDIDATES + 4} certificate values for {ALICE}" in err
    assert "Traceback" not in err
