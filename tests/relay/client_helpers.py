"""Shared builders for the relay tests: routes, TLS/trust sections and a relay client
wired to the session's development PKI. Test code only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.config.model import Route, TlsSection, TrustSection
from gateway.config.values import HostPort
from gateway.pki.dev import DevPki
from gateway.relay.client import ContentSource, RelayClient
from gateway.relay.mx import MxResolver, make_resolver
from gateway.relay.tlsclient import PeerVerifier
from gateway.smime.validate import CertificateValidator
from gateway.smtp.listeblanche import ListeBlanche
from gateway.spool.model import Envelope, MailParams, Recipient

OUR_HOSTNAME = "mx.chu-a.test"
SENDER = "alice.martin@chu-a.test"


def make_route(**overrides: Any) -> Route:
    """A ``[[routes]]`` entry with the contract's defaults (tls = verify, smime)."""
    fields: dict[str, Any] = {
        "name": "clinique-b",
        "domains": ("clinique-b.test",),
        "transport": "smtp",
        "next_hop": None,
        "tls": "verify",
        "tls_name": None,
        "security": "smime",
        "wrap": False,
        "fallback": "bounce",
        "anchors": (),
        "auth_user": None,
        "auth_password_file": None,
    }
    fields.update(overrides)
    return Route(**fields)


def static_route(port: int, **overrides: Any) -> Route:
    """A route to 127.0.0.1:``port`` verified as mx.clinique-b.test."""
    defaults: dict[str, Any] = {
        "next_hop": HostPort("127.0.0.1", port),
        "tls_name": "mx.clinique-b.test",
    }
    return make_route(**(defaults | overrides))


def tls_section(pki: DevPki) -> TlsSection:
    return TlsSection(
        certificate=pki.server_cert(OUR_HOSTNAME),
        private_key=pki.server_key(OUR_HOSTNAME),
        min_version="1.2",
        ciphers="",
    )


def trust_section(pki: DevPki, anchors: Sequence[Path] | None = None) -> TrustSection:
    return TrustSection(
        anchors=tuple(anchors) if anchors is not None else (pki.root_cert,),
        intermediates=(pki.intermediates,),
        crls=(pki.crl("serveurs"),),
        revocation="hard-fail",
        liste_blanche=None,
    )


def relay_client(
    pki: DevPki,
    *,
    resolver: MxResolver | None = None,
    trust: TrustSection | None = None,
    liste_blanche: ListeBlanche | None = None,
    concurrency: int = 10,
    mx_port: int = 25,
) -> RelayClient:
    trust = trust or trust_section(pki)
    validator = CertificateValidator.from_files(
        trust.anchors, trust.intermediates, trust.crls, trust.revocation
    )
    return RelayClient(
        helo_name=OUR_HOSTNAME,
        tls=tls_section(pki),
        trust=trust,
        resolver=resolver or MxResolver(make_resolver([]), mx_port=mx_port),
        verifier=PeerVerifier(validator, liste_blanche),
        concurrency_per_destination=concurrency,
    )


def envelope(*recipients: str, **params: Any) -> Envelope:
    return Envelope(
        SENDER, tuple(Recipient(address) for address in recipients), MailParams(**params)
    )


def content_of(*chunks: bytes) -> ContentSource:
    """A content source that yields ``chunks`` (fresh iterator per call)."""

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return source


MESSAGE = (
    b"From: alice.martin@chu-a.test\r\nTo: bob@clinique-b.test\r\n"
    b"Subject: [...]\r\nMessage-ID: <relay-test@chu-a.test>\r\n\r\n"
    b"line one\r\n.starts with a dot\r\nlast line\r\n"
)


@pytest.fixture(name="relay_clients")
async def relay_clients_fixture(dev_pki: DevPki) -> AsyncIterator[Callable[..., RelayClient]]:
    """``make(**relay_client keywords)``; every client made is closed at teardown, also
    when the test failed (no socket left open)."""
    made: list[RelayClient] = []

    def make(**kwargs: Any) -> RelayClient:
        client = relay_client(dev_pki, **kwargs)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()
