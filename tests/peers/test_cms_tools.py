"""Cross-tool S/MIME interop with the real programs: OpenSSL ``cms``, GnuPG ``gpgsm``,
NSS ``cmsutil``, all with the development PKI.

``nss`` holds alice.martin@chu-a.test and ``gpgsm`` holds claire.durand@clinique-b.test
(see ``tests.peers.small_fixtures``); OpenSSL takes keys and certificates by path.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.pki.dev import DevPki
from tests.peers.cms_tools import Gpgsm, NssCmsutil, OpenSSLCms, PeerToolError, process_gone
from tests.peers.procs import live_processes
from tests.peers.small_fixtures import GPGSM_USER, NSS_USER

CONTENT = (
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nCompte rendu de consultation (test only).\r\n"
)


def outsider_identity(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate and its key, outside the dev PKI (nobody trusts it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outsider")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "outsider.crt", directory / "outsider.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_openssl_encrypts_nss_and_gpgsm_decrypt(
    openssl_cms: OpenSSLCms, nss: NssCmsutil, gpgsm: Gpgsm, dev_pki: DevPki, tmp_path: Path
) -> None:
    # The outsider comes first: gpgsm then exits 2 although it decrypted (its known quirk).
    recipients = [
        outsider_identity(tmp_path)[0],
        dev_pki.user_cert(NSS_USER, "enc"),
        dev_pki.user_cert(GPGSM_USER, "enc"),
    ]
    enveloped = openssl_cms.encrypt(CONTENT, recipients, cipher="aes-256-cbc")

    assert nss.decrypt(enveloped) == CONTENT
    assert gpgsm.decrypt(enveloped) == CONTENT


def test_gpgsm_signs_openssl_verifies_against_the_root(
    gpgsm: Gpgsm, openssl_cms: OpenSSLCms, dev_pki: DevPki
) -> None:
    opaque = gpgsm.sign(CONTENT, GPGSM_USER)
    detached = gpgsm.sign(CONTENT, GPGSM_USER, detached=True)

    assert openssl_cms.verify(opaque, dev_pki.root_cert) == CONTENT
    assert openssl_cms.verify(detached, dev_pki.root_cert, content=CONTENT) == CONTENT
    with pytest.raises(PeerToolError, match="verify"):
        openssl_cms.verify(detached, dev_pki.root_cert, content=CONTENT + b"tampered\r\n")


def test_nss_signs_opaque_openssl_verifies(
    nss: NssCmsutil, openssl_cms: OpenSSLCms, dev_pki: DevPki
) -> None:
    signed = nss.sign(CONTENT, NSS_USER)

    assert openssl_cms.verify(signed, dev_pki.root_cert) == CONTENT
    assert nss.verify(signed) == CONTENT


def test_openssl_signs_nss_verifies_with_the_chain(
    openssl_cms: OpenSSLCms, nss: NssCmsutil, dev_pki: DevPki
) -> None:
    # claire is unknown to this NSS database: only the root is trusted, the
    # intermediate travels in the message.
    signer = (dev_pki.user_cert(GPGSM_USER, "sign"), dev_pki.user_key(GPGSM_USER, "sign"))
    opaque = openssl_cms.sign(CONTENT, *signer, chain=dev_pki.intermediates)
    detached = openssl_cms.sign(CONTENT, *signer, chain=dev_pki.intermediates, detached=True)

    assert nss.verify(opaque) == CONTENT
    assert nss.signer_statuses(detached, content=CONTENT) == ["GoodSignature"]
    assert nss.signer_statuses(detached, content=CONTENT + b"x") == ["DigestMismatch"]
    with pytest.raises(PeerToolError, match="DigestMismatch"):
        nss.verify(detached, content=CONTENT + b"x")


def test_a_signer_outside_the_trusted_root_is_refused(
    openssl_cms: OpenSSLCms, nss: NssCmsutil, gpgsm: Gpgsm, dev_pki: DevPki, tmp_path: Path
) -> None:
    signed = openssl_cms.sign(CONTENT, *outsider_identity(tmp_path))

    assert nss.signer_statuses(signed) == ["SigningCertNotTrusted"]
    with pytest.raises(PeerToolError, match="SigningCertNotTrusted"):
        nss.verify(signed)
    with pytest.raises(PeerToolError):
        gpgsm.verify(signed)
    with pytest.raises(PeerToolError, match="verify"):
        openssl_cms.verify(signed, dev_pki.root_cert)


def test_gpgsm_and_nss_exchange_encrypted_mail(
    gpgsm: Gpgsm, nss: NssCmsutil, dev_pki: DevPki
) -> None:
    gpgsm.import_certificate(dev_pki.user_cert(NSS_USER, "enc"))
    nss.import_certificate(dev_pki.user_cert(GPGSM_USER, "enc"), GPGSM_USER)

    assert nss.decrypt(gpgsm.encrypt(CONTENT, [NSS_USER])) == CONTENT
    assert gpgsm.decrypt(nss.encrypt(CONTENT, [GPGSM_USER])) == CONTENT


@pytest.mark.parametrize(
    ("cipher", "oaep"),
    [("aes-128-gcm", False), ("aes-256-gcm", False), ("des3", False), ("aes-256-cbc", True)],
)
def test_openssl_cipher_and_oaep_options_round_trip(
    openssl_cms: OpenSSLCms, dev_pki: DevPki, cipher: str, oaep: bool
) -> None:
    cert, key = dev_pki.user_cert(NSS_USER, "enc"), dev_pki.user_key(NSS_USER, "enc")
    enveloped = openssl_cms.encrypt(CONTENT, [cert], cipher=cipher, oaep=oaep)
    assert openssl_cms.decrypt(enveloped, cert, key) == CONTENT


def test_nss_cannot_decrypt_without_its_key(
    openssl_cms: OpenSSLCms, nss: NssCmsutil, dev_pki: DevPki
) -> None:
    enveloped = openssl_cms.encrypt(CONTENT, [dev_pki.user_cert(GPGSM_USER, "enc")])
    with pytest.raises(PeerToolError, match="SEC_ERROR_NOT_A_RECIPIENT"):
        nss.decrypt(enveloped)


def test_gpgsm_close_stops_its_agent_and_removes_its_home(dev_pki: DevPki) -> None:
    tool = Gpgsm()
    try:
        tool.trust_root(dev_pki.root_cert)
        # importing a private key is what starts gpg-agent
        tool.import_identity(
            dev_pki.user_cert(GPGSM_USER, "enc"), dev_pki.user_key(GPGSM_USER, "enc")
        )
        pid = tool.agent_pid()
        assert pid is not None
        assert len(str(tool.home / "S.gpg-agent")) < 108
    finally:
        tool.close()
    assert not tool.home.exists()
    assert live_processes(marker=str(tool.home)) == []
    assert process_gone(pid)


def test_bad_arguments_fail_clearly(openssl_cms: OpenSSLCms, dev_pki: DevPki) -> None:
    with pytest.raises(ValueError, match="cipher"):
        openssl_cms.encrypt(CONTENT, [dev_pki.user_cert(NSS_USER, "enc")], cipher="rc2")
    with pytest.raises(PeerToolError, match="exited with status"):
        openssl_cms.decrypt(
            b"not CMS", dev_pki.user_cert(NSS_USER, "enc"), dev_pki.user_key(NSS_USER, "enc")
        )
