"""The relay's TLS side: the client context, RFC 6125 name checks on the validated
leaf, the liste blanche for tls-only routes, and SMTP AUTH toward a smarthost."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509

from gateway.pki.dev import DevPki
from gateway.relay.client import RelayClient
from gateway.relay.tlsclient import (
    TlsVerificationError,
    check_reference_name,
    client_context,
    server_name_indication,
)
from gateway.smime.types import Purpose, ValidationResult
from gateway.smime.validate import CertificateValidator
from gateway.smtp.listeblanche import parse_liste_blanche
from tests.peers.ports import free_port
from tests.peers.small_fixtures import sink_tls_context
from tests.peers.smtp_sink import SmtpSink
from tests.relay.client_helpers import (
    MESSAGE,
    content_of,
    envelope,
    relay_clients_fixture,  # noqa: F401 (the relay_clients fixture)
    static_route,
    tls_section,
    trust_section,
)


def _chain(pki: DevPki, hostname: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pki.server_cert(hostname).read_bytes())


def _validated(pki: DevPki, hostname: str) -> ValidationResult:
    trust = trust_section(pki)
    validator = CertificateValidator.from_files(
        trust.anchors, trust.intermediates, trust.crls, trust.revocation
    )
    chain = _chain(pki, hostname)
    result = validator.validate(chain[0], chain[1:], Purpose.TLS_SERVER)
    assert result.valid, result.reason
    return result


def test_reference_name_matching_rfc6125(dev_pki: DevPki) -> None:
    result = _validated(dev_pki, "mx.clinique-b.test")
    check_reference_name(result, "mx.clinique-b.test")
    check_reference_name(result, "MX.Clinique-B.Test")
    check_reference_name(result, "127.0.0.1")  # iPAddress SAN
    for wrong in ("clinique-b.test", "x.mx.clinique-b.test", "127.0.0.2", "mx.other.test"):
        with pytest.raises(TlsVerificationError):
            check_reference_name(result, wrong)


def test_subject_cn_alone_never_matches(
    dev_pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("cn") / "cn-only.crt"
    dev_pki.issue_server("cn.clinique-b.test", dns_names=["other.clinique-b.test"], path=path)
    trust = trust_section(dev_pki)
    validator = CertificateValidator.from_files(
        trust.anchors, trust.intermediates, trust.crls, trust.revocation
    )
    chain = x509.load_pem_x509_certificates(path.read_bytes())
    result = validator.validate(chain[0], chain[1:], Purpose.TLS_SERVER)
    assert result.valid
    with pytest.raises(TlsVerificationError):
        check_reference_name(result, "cn.clinique-b.test")


def test_client_context_settings(dev_pki: DevPki) -> None:
    verify = client_context(tls_section(dev_pki), trust_section(dev_pki), verify=True)
    assert verify.verify_mode is ssl.CERT_REQUIRED and not verify.check_hostname
    assert verify.minimum_version is ssl.TLSVersion.TLSv1_2
    assert len(verify.get_ca_certs()) == 3  # root + both intermediates
    opportunistic = client_context(tls_section(dev_pki), trust_section(dev_pki), verify=False)
    assert opportunistic.verify_mode is ssl.CERT_NONE and not opportunistic.get_ca_certs()
    assert server_name_indication("127.0.0.1") is None
    assert server_name_indication("mx.clinique-b.test") == "mx.clinique-b.test"


def _liste_blanche(domain: str, dn: str) -> bytes:
    return (
        '<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">'
        "<DateDeGeneration>2026-11-01T00:00:00Z</DateDeGeneration><ListeDomaines>"
        f"<Domaine><Nom>{domain}</Nom><DNCertificatOperateur>{dn}</DNCertificatOperateur>"
        "</Domaine></ListeDomaines></ListeBlancheMSSante>"
    ).encode()


@pytest.mark.parametrize("listed", [True, False])
async def test_tls_only_route_needs_the_liste_blanche_dn(
    smtp_sink: SmtpSink, dev_pki: DevPki, listed: bool, relay_clients: Callable[..., RelayClient]
) -> None:
    sink_dn = _chain(dev_pki, "mx.clinique-b.test")[0].subject.rfc4514_string()
    dn = sink_dn if listed else "CN=mx.operateur.test,O=AUTRE,C=FR"
    liste = parse_liste_blanche(_liste_blanche("clinique-b.test", dn))
    client = relay_clients(liste_blanche=liste)
    route = static_route(smtp_sink.port, security="tls-only")
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    outcome = result.per_recipient["bob@clinique-b.test"]
    if listed:
        assert outcome.delivered
        assert len(smtp_sink.wait_for_messages(1)) == 1
    else:
        assert not outcome.delivered and not outcome.permanent
        assert "liste blanche" in outcome.text
        assert smtp_sink.messages == []


async def test_tls_only_route_without_liste_blanche_fails_closed(
    smtp_sink: SmtpSink, dev_pki: DevPki, relay_clients: Callable[..., RelayClient]
) -> None:
    client = relay_clients()
    route = static_route(smtp_sink.port, security="tls-only")
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    assert not result.per_recipient["bob@clinique-b.test"].delivered
    assert smtp_sink.messages == []


# -- SMTP AUTH toward a smarthost (aiosmtpd: AUTH PLAIN only after STARTTLS) -------------

USER, PASSWORD = "passerelle", "s3cret-pass"


class _Smarthost:
    def __init__(self) -> None:
        self.messages: list[tuple[str | None, bytes]] = []
        self.logins: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, env: Envelope) -> str:
        assert isinstance(env.original_content, bytes)
        self.messages.append((getattr(session, "login_data", None), env.original_content))
        return "250 2.0.0 queued"

    def authenticate(
        self, server: SMTP, session: Session, env: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        self.logins.append(data.login)
        ok = data.login == USER.encode() and data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False, auth_data=data)


@pytest.fixture
def smarthost(dev_pki: DevPki) -> Iterator[tuple[_Smarthost, int]]:
    handler = _Smarthost()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        server_hostname="mx.clinique-b.test",
        tls_context=sink_tls_context(dev_pki),
        require_starttls=True,
        authenticator=handler.authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _secret(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "smarthost.secret"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


async def test_auth_plain_after_starttls(
    smarthost: tuple[_Smarthost, int],
    dev_pki: DevPki,
    tmp_path: Path,
    relay_clients: Callable[..., RelayClient],
) -> None:
    handler, port = smarthost
    route = static_route(port, auth_user=USER, auth_password_file=_secret(tmp_path, PASSWORD))
    client = relay_clients()
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    assert result.per_recipient["bob@clinique-b.test"].delivered, result
    assert handler.logins == [USER.encode()]
    assert [content for _, content in handler.messages] == [MESSAGE]


async def test_wrong_password_is_temporary_and_sends_nothing(
    smarthost: tuple[_Smarthost, int],
    dev_pki: DevPki,
    tmp_path: Path,
    relay_clients: Callable[..., RelayClient],
) -> None:
    handler, port = smarthost
    route = static_route(port, auth_user=USER, auth_password_file=_secret(tmp_path, "wrong"))
    client = relay_clients()
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    outcome = result.per_recipient["bob@clinique-b.test"]
    assert not outcome.delivered and not outcome.permanent
    assert "authentication failed" in outcome.text and "wrong" not in outcome.text
    assert handler.messages == []


async def test_credentials_never_sent_without_tls(
    smtp_sink_factory: Callable[..., SmtpSink],
    dev_pki: DevPki,
    tmp_path: Path,
    relay_clients: Callable[..., RelayClient],
) -> None:
    clear = smtp_sink_factory(hostname="relay.partner.test")
    route = static_route(
        clear.port,
        tls="opportunistic",
        auth_user=USER,
        auth_password_file=_secret(tmp_path, PASSWORD),
    )
    client = relay_clients()
    result = await client.deliver(route, envelope("bob@clinique-b.test"), content_of(MESSAGE))
    assert "not encrypted" in result.per_recipient["bob@clinique-b.test"].text
    assert not any("AUTH" in line for line in clear.transcript)
    assert clear.messages == []
