"""Unit tests of the pure pieces: CRL rules, OCSP response rules, the HTTP fetcher's limits,
the revocation mode parser. Certificates are made here with cryptography (fast EC keys,
RSA where the test is about RSA)."""

from __future__ import annotations

import io
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import algos
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from gateway.smime import crl as crl_rules
from gateway.smime import ocsp as ocsp_rules
from gateway.smime.fetch import FetchError, HttpFetcher, UnsupportedUrl, require_http
from gateway.smime.revocation import RevocationMode
from tests.peers.http_server import HttpServer
from tests.smime.validate.responder import build_crl

NOW = datetime.now(UTC)
SKEW = timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    ca: bool,
    dp: str | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dp:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(dp)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


Ca = tuple[x509.Certificate, rsa.RSAPrivateKey]


@pytest.fixture(scope="module")
def ca() -> Ca:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _cert("CA", key, "CA", key, ca=True), key


@pytest.fixture(scope="module")
def leaf(ca: Ca) -> x509.Certificate:
    return _cert(
        "leaf",
        ec.generate_private_key(ec.SECP256R1()),
        "CA",
        ca[1],
        ca=False,
        dp="http://crl.test/ca.crl",
    )


def _parsed(ca: Ca, *revoked: int, **kw: object) -> crl_rules.ParsedCrl:
    return crl_rules.parse_crl(build_crl(ca[0], ca[1], revoked, **kw))  # type: ignore[arg-type]


# -- CRL rules ---------------------------------------------------------------------------


def test_a_crl_reads_from_pem_and_der_and_garbage_is_an_error(ca: Ca) -> None:
    der = build_crl(ca[0], ca[1], [5], number=7)
    pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
    assert crl_rules.parse_crl(der).number == 7
    assert crl_rules.parse_crl(pem).fingerprint == crl_rules.parse_crl(der).fingerprint
    with pytest.raises(crl_rules.CrlError):
        crl_rules.parse_crl(b"\x30\x03\x02\x01\x00")


def test_lookup_finds_listed_serials_only(ca: Ca, leaf: x509.Certificate) -> None:
    parsed = _parsed(ca, leaf.serial_number, reason=x509.ReasonFlags.certificate_hold)
    entry = crl_rules.lookup(parsed, leaf.serial_number)
    assert entry is not None and entry.reason == "certificateHold"
    assert crl_rules.lookup(parsed, leaf.serial_number + 1) is None
    removed = _parsed(ca, leaf.serial_number, reason=x509.ReasonFlags.remove_from_crl)
    assert crl_rules.lookup(removed, leaf.serial_number) is None


def test_signature_problems(ca: Ca, leaf: x509.Certificate) -> None:
    assert crl_rules.signature_problem(_parsed(ca), ca[0]) is None
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = crl_rules.parse_crl(build_crl(ca[0], other_key))
    assert "signature" in (crl_rules.signature_problem(forged, ca[0]) or "")
    other_ca = _cert("OTHER", other_key, "OTHER", other_key, ca=True)
    assert "issuer name" in (crl_rules.signature_problem(_parsed(ca), other_ca) or "")


@pytest.mark.parametrize(
    ("extension", "critical", "expected"),
    [
        (x509.DeltaCRLIndicator(1), True, "delta"),
        (
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            True,
            "unknown critical",
        ),
        (
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
            False,
            None,
        ),
    ],
)
def test_crl_structure(
    ca: Ca, extension: x509.ExtensionType, critical: bool, expected: str | None
) -> None:
    parsed = _parsed(ca, extensions=[(extension, critical)])
    problem = crl_rules.signature_problem(parsed, ca[0])
    assert (problem is None) if expected is None else (expected in (problem or ""))


def _idp(**flags: object) -> x509.IssuingDistributionPoint:
    values: dict[str, object] = {
        "full_name": None,
        "relative_name": None,
        "only_contains_user_certs": False,
        "only_contains_ca_certs": False,
        "only_some_reasons": None,
        "indirect_crl": False,
        "only_contains_attribute_certs": False,
    }
    values.update(flags)
    return x509.IssuingDistributionPoint(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("idp", "expected"),
    [
        (_idp(only_contains_user_certs=True), None),
        (_idp(only_contains_ca_certs=True), "only CA"),
        (_idp(only_some_reasons=frozenset({x509.ReasonFlags.key_compromise})), "some"),
        (_idp(full_name=[x509.UniformResourceIdentifier("http://crl.test/ca.crl")]), None),
        (
            _idp(full_name=[x509.UniformResourceIdentifier("http://crl.test/part2.crl")]),
            "distribution point",
        ),
    ],
)
def test_crl_scope(
    ca: Ca, leaf: x509.Certificate, idp: x509.IssuingDistributionPoint, expected: str | None
) -> None:
    parsed = _parsed(ca, extensions=[(idp, True)])
    assert crl_rules.signature_problem(parsed, ca[0]) is None
    problem = crl_rules.scope_problem(parsed, leaf)
    assert (problem is None) if expected is None else (expected in (problem or ""))


def test_an_indirect_crl_is_refused(ca: Ca) -> None:
    parsed = _parsed(ca, extensions=[(_idp(indirect_crl=True), True)])
    assert "indirect" in (crl_rules.signature_problem(parsed, ca[0]) or "")


def test_freshness(ca: Ca) -> None:
    parsed = _parsed(ca, this_update=NOW - timedelta(days=2), next_update=NOW - timedelta(hours=1))
    assert "expired" in (
        crl_rules.freshness_problem(parsed, NOW, grace=timedelta(0), skew=SKEW) or ""
    )
    assert crl_rules.freshness_problem(parsed, NOW, grace=timedelta(hours=2), skew=SKEW) is None
    future = _parsed(ca, this_update=NOW + timedelta(hours=1))
    assert "future" in (
        crl_rules.freshness_problem(future, NOW, grace=timedelta(0), skew=SKEW) or ""
    )


# -- OCSP rules --------------------------------------------------------------------------


def _response(ca: Ca, leaf: x509.Certificate) -> ocsp.OCSPResponse:
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf,
            issuer=ca[0],
            algorithm=hashes.SHA1(),  # noqa: S303 - CertID hash, as responders expect
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW - timedelta(minutes=1),
            next_update=NOW + timedelta(hours=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.NAME, ca[0])
    )
    return builder.sign(ca[1], hashes.SHA256())


def _resign_pss(response: ocsp.OCSPResponse, key: rsa.RSAPrivateKey) -> bytes:
    parsed = asn1_ocsp.OCSPResponse.load(response.public_bytes(serialization.Encoding.DER))
    basic = parsed["response_bytes"]["response"].parsed
    basic["signature_algorithm"] = algos.SignedDigestAlgorithm(
        {
            "algorithm": "rsassa_pss",
            "parameters": {
                "hash_algorithm": {"algorithm": "sha384"},
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha384"}},
                "salt_length": 48,
            },
        }
    )
    tbs = basic["tbs_response_data"].dump()
    basic["signature"] = key.sign(
        tbs, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384()
    )
    parsed["response_bytes"]["response"] = asn1_ocsp.BasicOCSPResponse.load(basic.dump(force=True))
    return bytes(parsed.dump(force=True))


def _evaluate(
    data: bytes, leaf: x509.Certificate, issuer: x509.Certificate
) -> ocsp_rules.OcspVerdict:
    return ocsp_rules.evaluate_response(
        data, leaf, issuer, nonce=None, now=NOW, skew=SKEW, max_age=timedelta(days=1)
    )


def test_a_response_signed_by_name_with_rsa_pss_is_accepted(ca: Ca, leaf: x509.Certificate) -> None:
    data = _resign_pss(_response(ca, leaf), ca[1])
    assert _evaluate(data, leaf, ca[0]).state is ocsp_rules.OcspState.GOOD
    tampered = bytearray(data)
    tampered[-5] ^= 0x01
    with pytest.raises(ocsp_rules.OcspError):
        _evaluate(bytes(tampered), leaf, ca[0])


def test_the_request_carries_a_sha1_cert_id_and_the_nonce(ca: Ca, leaf: x509.Certificate) -> None:
    request = ocsp.load_der_ocsp_request(ocsp_rules.build_request(leaf, ca[0], b"n" * 16))
    assert request.serial_number == leaf.serial_number
    assert isinstance(request.hash_algorithm, hashes.SHA1)
    assert request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16


def test_garbage_is_not_a_response(ca: Ca, leaf: x509.Certificate) -> None:
    with pytest.raises(ocsp_rules.OcspError, match="not a readable"):
        _evaluate(b"<html>proxy error</html>", leaf, ca[0])


# -- fetcher -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ldap://ldap.test/cn=CA?certificateRevocationList",
        "https://crl.test/ca.crl",
        "file:///etc/passwd",
        "http:///x",
    ],
)
def test_only_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(UnsupportedUrl):
        require_http(url)
    with pytest.raises(UnsupportedUrl):
        HttpFetcher().get(url, max_bytes=100)


def test_a_redirect_may_only_lead_to_http() -> None:
    from gateway.smime.fetch import _HttpOnlyRedirects

    request = urllib.request.Request("http://crl.test/ca.crl")
    with pytest.raises(UnsupportedUrl):
        _HttpOnlyRedirects().redirect_request(
            request,
            io.BytesIO(),
            302,
            "Found",
            None,
            "file:///etc/passwd",  # type: ignore[arg-type]
        )


def test_the_fetcher_bounds_size_status_and_time() -> None:
    with HttpServer() as server:
        server.serve("/big.crl", b"x" * 5000)
        server.serve("/small.crl", b"y" * 10)
        fetcher = HttpFetcher(timeout=0.5)
        assert fetcher.get(server.url("/small.crl"), max_bytes=10) == b"y" * 10
        with pytest.raises(FetchError, match="larger than"):
            fetcher.get(server.url("/big.crl"), max_bytes=4999)
        with pytest.raises(FetchError, match="HTTP status 404"):
            fetcher.get(server.url("/missing.crl"), max_bytes=100)
        server.fail("/small.crl", "timeout")
        with pytest.raises(FetchError, match="request failed"):
            fetcher.get(server.url("/small.crl"), max_bytes=100)


def test_revocation_modes_parse() -> None:
    assert RevocationMode.parse("soft-fail") is RevocationMode.SOFT_FAIL
    assert RevocationMode.parse(RevocationMode.OFF) is RevocationMode.OFF
    with pytest.raises(ValueError, match="hard-fail\\|soft-fail\\|off"):
        RevocationMode.parse("hard")


def test_a_response_for_a_namesake_ca_does_not_match(ca: Ca, leaf: x509.Certificate) -> None:
    """Same issuer name and serial, other issuer key (a re-keyed or rogue CA)."""
    namesake_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    namesake = _cert("CA", namesake_key, "CA", namesake_key, ca=True)
    data = _response((namesake, namesake_key), leaf).public_bytes(serialization.Encoding.DER)
    with pytest.raises(ocsp_rules.OcspError, match="CertID"):
        _evaluate(data, leaf, ca[0])
