"""Outbound end to end (issue 6 item 7): a hospital MTA hands a message to ``missive
serve`` over the relay listener; the secure agent signs it with the organisation key
(``keys.organisation_signing``, made by ``certs init-dev --keys-dir``) and encrypts it
to Claire; the relay stage delivers it over verified TLS, with our client certificate,
to a real Postfix MX for clinique-b.test, which stores it in a Maildir.

What is checked on what Postfix stored: application/pkcs7-mime; ``openssl cms -decrypt``
with Claire's encryption key opens it, and so do NSS ``cmsutil -D`` and ``gpgsm
--decrypt`` (both hold Claire's key: the site's PKI is a copy of the session ``dev_pki``,
so the ``gpgsm`` fixture's user and an NSS database built here have the very keys the
annuaire publishes); the inner part is signed and ``openssl cms -verify -purpose
smimesign`` accepts it; the real Subject and body are inside only (no trace of them in
the stored bytes, base64-decoded parts included); the Received header shows TLS. Then
the queue is empty, ``audit verify`` passes and the trail holds ``agent.smime`` and
``relay.attempt`` with certificate serials.

The site is a demo site (``tests/sites.py``: the shipped ``conf/`` on free ports,
``var/`` by ``certs init-dev`` on a copy of the session PKI). Loopback only; ``serve``
runs in its own session and is stopped by PID (SIGTERM, then SIGKILL of its process
group) even when the test fails.
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki.dev import DevPki, load_dev_pki
from tests.peers.cms_tools import Gpgsm, NssCmsutil, OpenSSLCms
from tests.peers.fixtures import tls_files
from tests.peers.postfix import PostfixInstance
from tests.sites import (
    CONFIG,
    RunningServe,
    edit_config,
    enveloped_der,
    exported_audit,
    letter,
    missive,
    prepare_demo_site,
    readable_views,
    send_as_relay_client,
    serving,
)

SHIPPED_NEXT_HOP = 'next_hop = "127.0.0.1:2526"'
SENDER = "alice.martin@chu-a.test"
RECIPIENT = "claire.durand@clinique-b.test"
SUBJECT = "Compte rendu Zephyrin-7Q4 confidentiel"
BODY = "Resultats du patient Oxalys-93K: troponine elevee, rappeler le service."
SECRETS = (b"Zephyrin-7Q4", b"Oxalys-93K", b"troponine")


@pytest.fixture
def site(tmp_path: Path, dev_pki: DevPki) -> Path:
    """The shipped conf/ on free ports, var/pki a copy of the session PKI completed by
    ``certs init-dev`` (demo annuaire, key store, organisation signing key)."""
    return prepare_demo_site(tmp_path, session_pki=dev_pki.directory)


@pytest.fixture
def mx(site: Path, postfix_mx_factory: Callable[..., PostfixInstance]) -> PostfixInstance:
    """The Postfix MX of clinique-b.test, and the site's route pointed at it."""
    instance = postfix_mx_factory(
        tls_files(load_dev_pki(site / "var" / "pki"), "mx.clinique-b.test")
    )
    edit_config(site, (SHIPPED_NEXT_HOP, f'next_hop = "127.0.0.1:{instance.port}"'))
    return instance


@pytest.fixture
def serve(site: Path, mx: PostfixInstance) -> Iterator[RunningServe]:
    """``missive serve`` running on the site until the test ends: SIGTERM, exit 0."""
    with serving(site) as running:
        yield running


def _submit(site: Path) -> None:
    """A hospital MTA on 127.0.0.1 (a relay client) hands the message over STARTTLS."""
    message = letter(SENDER, RECIPIENT, SUBJECT, BODY, "<e2e-outbound@chu-a.test>")
    assert send_as_relay_client(site, SENDER, [RECIPIENT], message) == {}


def _assert_no_secret_in(stored: bytes) -> None:
    """Neither the Subject nor the body, as bytes or inside any base64 part."""
    views = readable_views(stored)
    for secret in SECRETS:
        assert all(secret.lower() not in view for view in views), secret


def _received_with_tls(stored: bytes) -> str:
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    received = [str(value) for value in parsed.get_all("Received", [])]
    assert received, "no Received header"
    return " ".join(received[0].split())


def _wait_for_empty_queue(site: Path, deadline: float) -> str:
    """Poll ``queue list`` until it shows no entry (the deadline guards a hang only)."""
    while True:
        listed = missive(site, "queue", "list", "--config", CONFIG)
        assert listed.returncode == 0, listed.stderr
        if listed.stdout.strip().endswith("0 entries"):
            return listed.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"queue not empty:\n{listed.stdout}")
        time.sleep(0.1)


def _serial(path: Path) -> str:
    """``<issuer CN>:<serial in hex>``, as audit events name a certificate."""
    certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    issuer = certificate.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    return f"{issuer!s}:{certificate.serial_number:x}"


def test_relayed_mail_reaches_postfix_signed_and_encrypted(
    site: Path,
    mx: PostfixInstance,
    serve: RunningServe,
    openssl_cms: OpenSSLCms,
    gpgsm: Gpgsm,
) -> None:
    pki = load_dev_pki(site / "var" / "pki")
    _submit(site)
    stored = mx.wait_for_messages(1)
    assert len(stored) == 1
    message = stored[0]

    _assert_no_secret_in(message)
    assert "using TLSv1." in _received_with_tls(message)

    enveloped = enveloped_der(message)
    claire_cert, claire_key = pki.user_cert(RECIPIENT, "enc"), pki.user_key(RECIPIENT, "enc")
    inner = openssl_cms.decrypt(enveloped, claire_cert, claire_key)
    inner_message = email.message_from_bytes(inner, policy=email.policy.default)
    assert inner_message.get_content_type() == "multipart/signed"  # RFC 8551 §3.5.3
    parts = inner_message.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    signature_part = parts[1]
    assert isinstance(signature_part, email.message.Message)
    signature = signature_part.get_payload(decode=True)
    assert isinstance(signature, bytes)
    signed_content = openssl_cms.verify(
        signature, pki.root_cert, content=_first_part(inner), untrusted=pki.intermediates
    )
    assert b"Zephyrin-7Q4" in signed_content and b"Oxalys-93K" in signed_content
    with pytest.raises(AssertionError):
        _assert_no_secret_in(inner)  # the check above does see the secrets when present

    # The other CMS implementations open it too, with Claire's key.
    assert gpgsm.decrypt(enveloped) == inner
    with NssCmsutil() as nss:
        nss.trust_root(pki.root_cert)
        nss.import_identity(claire_cert, claire_key, nickname=RECIPIENT, chain=pki.intermediates)
        assert nss.decrypt(enveloped) == inner

    _wait_for_empty_queue(site, time.monotonic() + 30)
    records = exported_audit(site)  # audit verify passes, then export
    smime = [r for r in records if r["type"] == "agent.smime"]
    assert len(smime) == 1
    # Claire's and Alice's (the sent copy) encryption certificates, and the signer's: the
    # organisation's, since a relay client has no personal key to sign with.
    assert set(smime[0]["cert_serials"]) == {  # type: ignore[call-overload]
        _serial(claire_cert),
        _serial(pki.user_cert(SENDER, "enc")),
        _serial(site / "var" / "keys" / "organisation" / "sign.pem"),
    }
    attempts = [r for r in records if r["type"] == "relay.attempt"]
    assert [a["outcome"] for a in attempts] == ["delivered"]
    # the MX's certificate (relay.attempt gives the bare serial, agent.smime issuer:serial)
    mx_serial = _serial(pki.server_cert("mx.clinique-b.test")).rpartition(":")[2]
    assert attempts[0]["cert_serials"] == [mx_serial]
    assert attempts[0]["details"]["peer_verified"] == "yes"  # type: ignore[index]


def _first_part(inner: bytes) -> bytes:
    """The signed bytes of a multipart/signed: the first body part exactly as sent
    (RFC 8551 §3.5.3: between the first boundary's CRLF and the CRLF of the next)."""
    parsed = email.message_from_bytes(inner, policy=email.policy.default)
    boundary = parsed.get_boundary()
    assert boundary is not None
    delimiter = b"--" + boundary.encode("ascii")
    first = inner.split(delimiter)[1]
    return first.removeprefix(b"\r\n").removeprefix(b"\n").removesuffix(b"\r\n")
