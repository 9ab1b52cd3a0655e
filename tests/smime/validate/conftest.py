"""Fixtures for the certificate validator tests: a development PKI whose certificates
point at a loopback HTTP server (CRL distribution points and an OCSP responder), the
server itself, and a clock the tests can move.

The PKI and the server live for the whole module session (the PKI's URLs embed the
server's port, and RSA key generation is the slow part); ``site`` resets what the server
publishes before each test: the PKI's current CRLs (DER, as distribution points serve
them), no failures, a fresh ``OcspResponder`` per CA. Hit counters of the shared server
only grow, so tests compare ``site.hits(path)`` before and after.

The server is ``tests.peers.http_server.HttpServer`` (the suite's HTTP peer), started
here directly rather than through its function-scoped fixture for that reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from gateway.pki.dev import DevPki, init_dev_pki
from tests.peers.http_server import HttpServer
from tests.peers.procs import make_temp_dir
from tests.smime.validate.responder import OcspResponder
from tests.smime.validate.support import CAS, SERVER, USERS, FakeClock, Site


@pytest.fixture(scope="session")
def revocation_server() -> Iterator[HttpServer]:
    server = HttpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pki(revocation_server: HttpServer) -> Iterator[DevPki]:
    """A dev PKI whose certificates name the loopback server: CRL DPs under /crl/ and an
    AIA OCSP URL /ocsp on every leaf."""
    directory = make_temp_dir("mv-valpki-")
    try:
        yield init_dev_pki(
            directory / "pki",
            users=USERS,
            servers=(SERVER,),
            crl_base_url=revocation_server.url("/crl"),
            ocsp_url=revocation_server.url("/ocsp"),
        )
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def site(revocation_server: HttpServer, pki: DevPki) -> Site:
    for ca in CAS:
        revocation_server.recover(f"/crl/{ca}.crl")
    revocation_server.recover("/ocsp")
    published = Site(revocation_server, pki)
    published.publish_crls()
    for ca in ("personnes", "serveurs"):
        certificate, key = published.ca(ca)
        published.responders[ca] = OcspResponder(certificate, key)
    revocation_server.set_ocsp_handler(published.answer_ocsp, "/ocsp")
    return published


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
