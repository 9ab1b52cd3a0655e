"""The CRL/OCSP HTTP server, fetched with urllib and real CRL/OCSP structures."""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from gateway.pki.dev import DevPki
from tests.peers.http_server import HttpServer, HttpServerError

#: urllib without the environment's proxies (a proxy would not be loopback).
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ALICE = "alice.martin@chu-a.test"


def fetch(
    url: str, data: bytes | None = None, content_type: str | None = None, timeout: float = 10.0
) -> tuple[bytes, str]:
    request = urllib.request.Request(url, data=data)  # noqa: S310 - our own http://127.0.0.1
    if content_type:
        request.add_header("Content-Type", content_type)
    with OPENER.open(request, timeout=timeout) as response:
        return response.read(), response.headers.get_content_type()


def http_error_code(url: str, data: bytes | None = None, content_type: str | None = None) -> int:
    """The status of a request expected to fail (the error's response is closed)."""
    with pytest.raises(urllib.error.HTTPError) as failed:
        fetch(url, data, content_type)
    with failed.value:
        return failed.value.code


def crl_der(pki: DevPki, ca: str) -> bytes:
    return x509.load_pem_x509_crl(pki.crl(ca).read_bytes()).public_bytes(Encoding.DER)


def test_crl_is_served_with_its_content_type(http_server: HttpServer, dev_pki: DevPki) -> None:
    url = http_server.serve("/crl/personnes.crl", crl_der(dev_pki, "personnes"))

    body, content_type = fetch(url)

    crl = x509.load_der_x509_crl(body)
    assert content_type == "application/pkix-crl"
    assert crl.issuer.rfc4514_string().startswith("CN=")
    assert http_server.hits("/crl/personnes.crl") == 1
    assert http_error_code(http_server.url("/crl/other.crl")) == 404


class OcspResponder:
    """A real OCSP responder for the personnes CA (answers GOOD for what it is asked)."""

    def __init__(self, pki: DevPki) -> None:
        self.issuer = x509.load_pem_x509_certificate(pki.ca_cert("personnes").read_bytes())
        key = serialization.load_pem_private_key(pki.ca_key("personnes").read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key
        self.leaf = x509.load_pem_x509_certificate(pki.user_cert(ALICE, "enc").read_bytes())

    def request_for_leaf(self) -> bytes:
        # SHA-1 CertID: what RFC 5019 clients send; an identifier, not a signature
        builder = ocsp.OCSPRequestBuilder().add_certificate(
            self.leaf,
            self.issuer,
            hashes.SHA1(),  # noqa: S303
        )
        return builder.build().public_bytes(Encoding.DER)

    def __call__(self, der_request: bytes) -> bytes:
        request = ocsp.load_der_ocsp_request(der_request)
        assert request.serial_number == self.leaf.serial_number
        now = datetime.now(UTC)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=self.leaf,
                issuer=self.issuer,
                algorithm=hashes.SHA1(),  # noqa: S303 - CertID hash of the request
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=now,
                next_update=now + timedelta(hours=1),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.issuer)
        )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_ocsp_post_and_get_reach_the_handler(http_server: HttpServer, dev_pki: DevPki) -> None:
    responder = OcspResponder(dev_pki)
    url = http_server.set_ocsp_handler(responder)
    request = responder.request_for_leaf()

    posted, content_type = fetch(url, request, "application/ocsp-request")
    encoded = urllib.parse.quote(base64.b64encode(request).decode("ascii"), safe="")
    got, _ = fetch(f"{url}/{encoded}")  # RFC 6960 A.1 GET form

    for body in (posted, got):
        response = ocsp.load_der_ocsp_response(body)
        assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert response.serial_number == responder.leaf.serial_number
    assert content_type == "application/ocsp-response"
    assert http_server.hits("/ocsp") == 2
    assert http_server.ocsp_requests == [request, request]
    assert http_server.errors == []


def test_forced_500_then_recovery(http_server: HttpServer, dev_pki: DevPki) -> None:
    url = http_server.serve("/personnes.crl", crl_der(dev_pki, "personnes"))
    http_server.fail("/personnes.crl", 500, count=2)

    assert [http_error_code(url), http_error_code(url)] == [500, 500]
    body, _ = fetch(url)

    assert body == crl_der(dev_pki, "personnes")
    assert http_server.hits("/personnes.crl") == 3


def test_forced_timeout_until_recovered(http_server: HttpServer, dev_pki: DevPki) -> None:
    url = http_server.serve("/personnes.crl", crl_der(dev_pki, "personnes"))
    http_server.fail("/personnes.crl", "timeout")

    with pytest.raises((TimeoutError, urllib.error.URLError)):
        fetch(url, timeout=0.3)  # the client's own timeout: the server never answers
    http_server.recover("/personnes.crl")
    body, _ = fetch(url)

    assert body == crl_der(dev_pki, "personnes")
    assert http_server.hits("/personnes.crl") == 2


def test_a_failing_ocsp_handler_answers_500(http_server: HttpServer) -> None:
    def broken(der_request: bytes) -> bytes:
        raise ValueError("not an OCSP request")

    url = http_server.set_ocsp_handler(broken, "/status")
    assert http_error_code(url, b"\x30\x00", "application/ocsp-request") == 500
    assert http_server.errors == ["ValueError: not an OCSP request"]
    assert http_error_code(url, b"\x30\x00", "text/plain") == 415


def test_configuration_mistakes_are_refused(http_server: HttpServer) -> None:
    with pytest.raises(HttpServerError):
        http_server.serve("no-slash", b"")
    with pytest.raises(HttpServerError):
        http_server.fail("/x", 200)
