"""pytest fixtures for the small peers: ``smtp_sink`` (and ``smtp_sink_factory``),
``dns_server``, ``http_server``, ``openssl_cms``, ``gpgsm`` and ``nss``.

Registered by the root ``tests/conftest.py`` (``pytest_plugins``). Every fixture is
function-scoped (each is cheap: an in-process server, or a program's private temp dir)
and stops what it started at teardown, also when the test failed: the servers close
their sockets and threads, ``gpgsm`` stops its gpg-agent by PID, every temp dir is
removed.

Identities (from the session-wide ``dev_pki`` of ``tests.peers.fixtures``):
- ``smtp_sink`` plays the remote MX ``mx.clinique-b.test``: STARTTLS with that server's
  certificate (leaf + chain, SAN also IP:127.0.0.1), a client certificate asked for and
  verified against the dev PKI (root + intermediates) but not required;
- ``gpgsm`` holds ``GPGSM_USER`` (claire.durand@clinique-b.test, signature and encryption
  keys) and ``nss`` holds ``NSS_USER`` (alice.martin@chu-a.test, both keys, nickname =
  the address); both trust the dev PKI root and know the intermediates. Two different
  users, so a message encrypted to both exercises "another recipient is unknown".
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from gateway.pki.dev import DevPki
from tests.peers.cms_tools import Gpgsm, NssCmsutil, OpenSSLCms
from tests.peers.dns_server import DnsServer
from tests.peers.fixtures import ca_bundle
from tests.peers.http_server import HttpServer
from tests.peers.smtp_sink import SmtpSink, server_tls_context

SINK_HOSTNAME = "mx.clinique-b.test"
GPGSM_USER = "claire.durand@clinique-b.test"
NSS_USER = "alice.martin@chu-a.test"


def sink_tls_context(
    pki: DevPki, hostname: str = SINK_HOSTNAME, *, require_client_cert: bool = False
) -> ssl.SSLContext:
    """Server TLS context for a sink with one of the dev PKI's server identities,
    verifying client certificates against the dev PKI."""
    return server_tls_context(
        pki.server_cert(hostname),
        pki.server_key(hostname),
        client_cas=[ca_bundle(pki)],
        require_client_cert=require_client_cert,
    )


@pytest.fixture
def smtp_sink_factory(dev_pki: DevPki) -> Iterator[Callable[..., SmtpSink]]:
    """``make(**kwargs)`` -> a started ``SmtpSink`` (keywords of ``SmtpSink``; pass
    ``tls=sink_tls_context(dev_pki, ...)`` for STARTTLS); all are stopped at teardown."""
    with ExitStack() as cleanup:

        def make(**kwargs: Any) -> SmtpSink:
            sink = SmtpSink(**kwargs)
            cleanup.callback(sink.stop)
            return sink.start()

        yield make


@pytest.fixture
def smtp_sink(smtp_sink_factory: Callable[..., SmtpSink], dev_pki: DevPki) -> SmtpSink:
    """A capture sink as ``mx.clinique-b.test``: STARTTLS offered, client cert asked."""
    return smtp_sink_factory(hostname=SINK_HOSTNAME, tls=sink_tls_context(dev_pki))


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """An empty authoritative DNS server on 127.0.0.1 (UDP+TCP); add records in the test."""
    with DnsServer() as server:
        yield server


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """An HTTP server on 127.0.0.1 with nothing served yet (``serve``, ``set_ocsp_handler``)."""
    with HttpServer() as server:
        yield server


@pytest.fixture
def openssl_cms() -> Iterator[OpenSSLCms]:
    """``openssl cms`` in a private temp dir (keys and certificates are passed by path)."""
    with OpenSSLCms() as tool:
        yield tool


@pytest.fixture
def gpgsm(dev_pki: DevPki) -> Iterator[Gpgsm]:
    """gpgsm holding ``GPGSM_USER``'s two identities, trusting the dev PKI root."""
    with Gpgsm() as tool:
        tool.trust_root(dev_pki.root_cert)
        tool.import_certificate(dev_pki.intermediates)
        for purpose in ("sign", "enc"):
            tool.import_identity(
                dev_pki.user_cert(GPGSM_USER, purpose),
                dev_pki.user_key(GPGSM_USER, purpose),
                chain=dev_pki.intermediates,
            )
        yield tool


@pytest.fixture
def nss(dev_pki: DevPki) -> Iterator[NssCmsutil]:
    """An NSS database holding ``NSS_USER``'s two identities, trusting the dev PKI root."""
    with NssCmsutil() as tool:
        tool.trust_root(dev_pki.root_cert)
        for purpose in ("sign", "enc"):
            tool.import_identity(
                dev_pki.user_cert(NSS_USER, purpose),
                dev_pki.user_key(NSS_USER, purpose),
                nickname=NSS_USER,
                chain=dev_pki.intermediates,
            )
        yield tool
